"""Limits of the gateway, exact at the boundary, against a real process: requests and tokens per
minute per key (700001, 700002) and per model (700004, 700005), the deployment's QPS limit
(700004), and the trial allowance per key (600005), which survives a restart (seeded from usage)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_harness import GatewayEnv, start_stub

PROMPT = [{"role": "user", "content": "x" * 40}]  # estimated and counted as 10 prompt tokens
PER_CALL = 10 + 16  # prompt + the stub's 16 completion tokens


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    a = start_stub(ident="a")
    env = GatewayEnv(tmp_path_factory.mktemp("gwl"))
    inst = [{"id": "a-0", "url": f"http://127.0.0.1:{a.port}/v1"}]
    env.config["deployments"] = [
        {"tenant": "acme", "name": "chat", "instances": inst},
        {"tenant": "acme", "name": "chat2", "instances": inst},
        {"tenant": "acme", "name": "limited", "instances": inst, "qps": 2},
    ]
    env.config["groups"] = [
        {"tenant": "acme", "name": "krpm", "services": ["chat"], "per_key": {"rpm": 3}},
        {"tenant": "acme", "name": "ktpm", "services": ["chat"], "per_key": {"tpm": 100}},
        {"tenant": "acme", "name": "real", "services": ["chat"], "per_key": {"tpm": 200}},
        {"tenant": "acme", "name": "mrpm", "services": ["chat", "chat2"], "per_model": {"chat": {"rpm": 3}}},
        {"tenant": "acme", "name": "mtpm", "services": ["chat"], "per_model": {"chat": {"tpm": 100}}},
        {"tenant": "acme", "name": "qps", "services": ["limited"]},
        {"tenant": "acme", "name": "trial", "services": ["chat"], "trial_tokens": 50},
    ]
    env.keys = {g["name"]: env.add_key("acme", g["name"]) for g in env.config["groups"]}  # type: ignore[attr-defined]
    env.start(usage_flush_s=0.2)
    yield env
    env.close()
    a.stop()


def _call(env: GatewayEnv, group: str, model: str = "chat", secret: str | None = None) -> httpx.Response:
    secret = secret or env.keys[group][0]  # type: ignore[attr-defined]
    return httpx.post(
        env.url + "/chat/completions",
        json={"model": model, "messages": PROMPT},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


def _refused(r: httpx.Response, code: str, max_retry: int = 60) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert 1 <= int(r.headers["retry-after"]) <= max_retry


def test_key_rpm_exact(gw: GatewayEnv) -> None:
    assert [_call(gw, "krpm").status_code for _ in range(3)] == [200, 200, 200]
    _refused(_call(gw, "krpm"), "700001")
    other, _ = gw.add_key("acme", "krpm")  # per key: another key of the group still passes
    time.sleep(1.2)
    assert _call(gw, "krpm", secret=other).status_code == 200


def test_key_tpm_exact(gw: GatewayEnv) -> None:
    # 100 tokens/min: admitted while charged + 10 (prompt estimate) <= 100; each call charges 26.
    assert [_call(gw, "ktpm").status_code for _ in range(4)] == [200] * 4  # 4th: 78 + 10 <= 100
    _refused(_call(gw, "ktpm"), "700002")  # 104 + 10 > 100


def test_tpm_charges_the_tokens_the_server_counted(gw: GatewayEnv) -> None:
    """A prompt the server counts as 30 tokens (a chat template adds what characters do not show)
    while its text is 3 tokens by the estimate: each call uses 30 + 16 = 46. Admission must follow
    the real use, so tpm 200 admits 5 calls (230 tokens: the last one admitted at 184 + 3), not
    the ~10 the estimate alone would (the fault: 360 used against a tpm of 200)."""
    secret = gw.keys["real"][0]  # type: ignore[attr-defined]
    used, codes = 0, []
    for _ in range(12):
        r = httpx.post(gw.url + "/chat/completions", timeout=10, headers={"Authorization": f"Bearer {secret}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi [[ptok:30]]"}]})  # fmt: skip
        codes.append(r.status_code)
        if r.status_code != 200:
            _refused(r, "700002")
            break
        used += r.json()["usage"]["total_tokens"]
    assert codes == [200] * 5 + [429] and used == 230


def test_token_estimate_counts_cjk_characters() -> None:
    from runners.gateway.checks import estimate_tokens

    assert estimate_tokens("x" * 40) == 10
    assert estimate_tokens("你好" * 20) == 40  # chars / 4 would say 10
    assert estimate_tokens("你好 world") == 2 + 6 // 4
    assert estimate_tokens("") == 1


def test_model_rpm_exact(gw: GatewayEnv) -> None:
    assert [_call(gw, "mrpm").status_code for _ in range(3)] == [200, 200, 200]
    _refused(_call(gw, "mrpm"), "700004")
    assert _call(gw, "mrpm", model="chat2").status_code == 200  # other models unaffected


def test_model_tpm_exact(gw: GatewayEnv) -> None:
    assert [_call(gw, "mtpm").status_code for _ in range(4)] == [200] * 4
    _refused(_call(gw, "mtpm"), "700005")


def test_deployment_qps(gw: GatewayEnv) -> None:
    codes = [_call(gw, "qps", model="limited") for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    _refused(codes[2], "700004", max_retry=1)
    assert "QPS" in codes[2].json()["error"]["message"]
    time.sleep(int(codes[2].headers["retry-after"]) + 0.05)
    assert _call(gw, "qps", model="limited").status_code == 200


def test_trial_allowance_and_restart(gw: GatewayEnv) -> None:
    assert [_call(gw, "trial").status_code for _ in range(2)] == [200, 200]  # 26, then 52 >= 50
    r = _call(gw, "trial")
    assert r.status_code == 429 and r.json()["error"]["code"] == "600005"
    assert r.json()["error"]["type"] == "RESOURCES_TIPS"
    # the allowance is counted from the usage table: a restarted gateway still refuses
    gw.gateway.stop()
    gw.start()
    r = _call(gw, "trial")
    assert r.status_code == 429 and r.json()["error"]["code"] == "600005"
    _, key_id = gw.keys["trial"]  # type: ignore[attr-defined]
    recs = [u for u in gw.usage() if u.key_id == key_id and u.status == 200]
    assert sum(u.prompt_tokens + u.completion_tokens for u in recs) == 2 * PER_CALL
