"""Gateway operations against real processes: routing around a killed instance, least outstanding
requests, config and key reload, and graceful shutdown without losing a usage record."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_state
from gateway_harness import GatewayEnv, start_stub

USER = [{"role": "user", "content": "hello"}]


def _stats(stub) -> dict:
    return httpx.get(f"http://127.0.0.1:{stub.port}/stats").json()


@pytest.fixture
def stubs():
    procs = [start_stub(ident=f"s{i}") for i in range(3)]
    yield procs
    for p in procs:
        p.stop()


state_url = test_state.state_url  # fixture: SQLite and a fresh PostgreSQL database


def _env(tmp_path: Path, stubs, state_url: str | None = None, **spec) -> GatewayEnv:
    env = GatewayEnv(tmp_path, state_url)
    env.config["deployments"] = [
        {
            "tenant": "acme",
            "name": "chat",
            "instances": [
                {"id": f"chat-{i}", "url": f"http://127.0.0.1:{s.port}/v1"} for i, s in enumerate(stubs)
            ],
        },
        {
            "tenant": "acme",
            "name": "extra",
            "instances": [{"id": "x", "url": f"http://127.0.0.1:{stubs[0].port}/v1"}],
        },
    ]
    env.config["groups"] = [{"tenant": "acme", "name": "g", "services": ["chat"]}]
    env.secret, env.key_id = env.add_key("acme", "g")  # type: ignore[attr-defined]
    env.start(**spec)
    return env


def _post(env: GatewayEnv, client: httpx.Client, content: str = "hello", stream: bool = False) -> int:
    r = client.post(
        env.url + "/chat/completions",
        json={"model": "chat", "stream": stream, "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": f"Bearer {env.secret}"},
        timeout=20,
    )  # type: ignore[attr-defined]
    if r.status_code == 200 and stream:
        assert r.text.rstrip().endswith("data: [DONE]"), r.text
    return r.status_code


def test_killed_instance_is_routed_around(tmp_path: Path, stubs) -> None:
    env = _env(tmp_path, stubs)
    try:
        results: list[int] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            with httpx.Client() as c:
                for i in range(n):
                    code = _post(env, c, "hello [[delay:2]]", stream=bool(i % 2))
                    with lock:
                        results.append(code)

        threads = [threading.Thread(target=worker, args=(40,)) for _ in range(6)]
        for t in threads:
            t.start()
        while len(results) < 60:
            time.sleep(0.01)
        os.kill(stubs[2].pid, signal.SIGKILL)  # mid-traffic, with connections open
        before = (_stats(stubs[0])["chat"], _stats(stubs[1])["chat"])
        for t in threads:
            t.join()
        assert results.count(200) == 240, [c for c in results if c != 200]
        after = (_stats(stubs[0])["chat"], _stats(stubs[1])["chat"])
        assert sum(after) - sum(before) > 0
    finally:
        env.close()


def test_least_outstanding_spreads_slow_calls(tmp_path: Path, stubs) -> None:
    env = _env(tmp_path, stubs)
    try:
        with ThreadPoolExecutor(6) as pool, httpx.Client() as c:
            codes = list(pool.map(lambda _: _post(env, c, "slow [[delay:400]]"), range(6)))
        assert codes == [200] * 6
        assert [_stats(s)["chat"] for s in stubs] == [2, 2, 2]
    finally:
        env.close()


def test_config_reload_on_change_and_sighup(tmp_path: Path, stubs) -> None:
    env = _env(tmp_path, stubs)
    h = {"Authorization": f"Bearer {env.secret}"}  # type: ignore[attr-defined]
    try:
        assert [m["id"] for m in httpx.get(env.url + "/models", headers=h).json()["data"]] == ["chat"]
        env.config["groups"][0]["services"] = ["chat", "extra"]
        env.write_config()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            ids = [m["id"] for m in httpx.get(env.url + "/models", headers=h).json()["data"]]
            if "extra" in ids:
                break
            time.sleep(0.05)
        assert ids == ["chat", "extra"] and time.monotonic() - t0 < 2.5  # checked every 0.5 s
        # SIGHUP reloads even when the mtime did not move (same-second rewrite)
        st = os.stat(env.config_path)
        env.config["groups"][0]["enabled"] = False
        env.write_config()
        os.utime(env.config_path, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.kill(env.gateway.pid, signal.SIGHUP)
        time.sleep(0.3)
        r = httpx.get(env.url + "/models", headers=h)
        assert r.status_code == 401 and r.json()["error"]["code"] == "500004"
        # a broken file keeps the last good table
        env.config_path.write_text("{broken")
        time.sleep(0.8)
        assert httpx.get(env.url + "/models", headers=h).status_code == 401
    finally:
        env.close()


def test_graceful_shutdown_loses_no_usage_record(tmp_path: Path, stubs, state_url: str) -> None:
    # state_url: SQLite, and a fresh PostgreSQL database (not the server's shared one, which keeps
    # whatever tables earlier runs left there).
    env = _env(tmp_path, stubs, state_url, usage_flush_s=60)  # only the shutdown flush writes records
    try:
        with httpx.Client() as c:
            for _ in range(5):
                assert _post(env, c) == 200
        with ThreadPoolExecutor(12) as pool, httpx.Client(limits=httpx.Limits(max_connections=20)) as c:
            futs = [pool.submit(_post, env, c, "slow [[delay:600]]", bool(i % 2)) for i in range(12)]
            time.sleep(0.3)  # all 12 in flight
            env.gateway.p.send_signal(signal.SIGTERM)
            codes = [f.result() for f in futs]
        assert codes == [200] * 12
        assert env.gateway.p.wait(15) == 0
        recs = [r for r in env.usage() if r.key_id == env.key_id]  # type: ignore[attr-defined]
        assert len(recs) == 17 and all(r.status == 200 for r in recs)
        assert sum(r.stream for r in recs) == 6
        assert json.loads((tmp_path / "gw" / "ready.json").read_text())["pid"] == env.gateway.pid
    finally:
        env.close()
