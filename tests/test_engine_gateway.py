"""The engine runs the gateway: `apply` starts it with a config written from the state, model
servers get the internal key, scaling up and down under load drops no call, a killed instance is
routed around and restarted, `destroy` stops it; and the quality gate holds a deployment that
follows `@latest` on the previous version. Real processes (tests/fake_runners, runners.gateway),
real HTTP with the openai SDK.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import test_plan
from test_plan import make_stack, stop_all

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH

pytest.importorskip("litestar")

STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
finetunes:
  ft:
    model: base
    datasets: {train: faq}
    hyperparameters: {epochs: EPOCHS, global_batch_size: 2, micro_batch_size: 1, sequence_length: 64}
    output: {model: bot}
evaluations:
  ev: {model: bot@latest, dataset: faq, gate: {min_rouge_l: 0.3}}
deployments:
  chat: {model: bot@latest, engine: embedded, instances: INSTANCES}
service_groups:
  app: {services: [chat], keys: 1}
"""


def _stack(root: Path, instances: int = 1, epochs: int = 2) -> Path:
    text = STACK.replace("INSTANCES", str(instances)).replace("EPOCHS", str(epochs))
    if root.exists():
        (root / "stack.yaml").write_text(text)
        return root
    return make_stack(root, text)


def _apply(eng: Any) -> Any:
    result = eng.apply(eng.plan())
    assert result.ok, result.diagnostics
    return result


def _instance_pids(eng: Any, address: str = "deployment/acme/chat") -> list[int]:
    return [i["pid"] for i in eng.store.resource(address).outputs["instances"]]


def _gateways(root: Path) -> list[int]:
    """Live gateway processes of this stack, from the process table (a leaked one counts)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        args = [a.decode() for a in argv if a]
        ours = any(str(root) in a for a in args) and "zsconf.executors.wrap" not in args
        if state != "Z" and "runners.gateway" in args and ours:
            found.append(int(entry))
    return found


class _Load:
    """Calls through the gateway on 4 threads until stopped; counts answers and failures."""

    def __init__(self, url: str, key: str) -> None:
        self.client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
                assert r.choices[0].message.content == "echo: hi"
                self.ok += 1
            except Exception as exc:  # every failure is a dropped call
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_apply_runs_the_gateway_and_scaling_under_load_drops_nothing(
    tmp_path: Path, engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsconf.engine import Engine
    from zsconf.engine.gateway import gateway_dir

    monkeypatch.setenv("FAKE_DELAY", "0.02")  # keep calls in flight while instances change
    root = _stack(tmp_path / "s", instances=1)
    eng = Engine(root, f"sqlite:///{tmp_path / 'state.db'}")
    try:
        first = _apply(eng)
        assert first.gateway_url and first.gateway_url.endswith("/v1")
        (key,) = [k.secret for k in first.new_keys if k.address == "service_group/acme/app"]
        # The internal key reaches the servers, never the config of anything a client sees.
        assert (gateway_dir(root) / "upstream.key").stat().st_mode & 0o777 == 0o600
        client = openai.OpenAI(base_url=first.gateway_url, api_key=key, max_retries=0)
        r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "echo: hi"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=first.gateway_url, api_key="zs-wrong", max_retries=0).models.list()

        with _Load(first.gateway_url, key) as load:
            time.sleep(0.3)
            _stack(root, instances=3)
            _apply(eng)
            assert len(set(_instance_pids(eng))) == 3
            time.sleep(0.5)
            _stack(root, instances=1)
            _apply(eng)
            time.sleep(0.5)
        assert load.errors == [] and load.ok > 20
        assert len(_instance_pids(eng)) == 1
        # Routing changes reload the running gateway (SIGHUP); they never restart it.
        (gw,) = [h for h in eng.executor.list_instances() if h.deployment == "platform/gateway"]
        assert first.gateway_url == f"{gw.url}/v1" and len(_gateways(root)) == 1

        # A killed instance: calls go on (another instance), the next apply restarts it.
        _stack(root, instances=2)
        _apply(eng)
        victim = _instance_pids(eng)[0]
        os.killpg(victim, signal.SIGKILL)
        with _Load(first.gateway_url, key) as load:
            time.sleep(1.0)
        assert load.ok > 5
        plan = eng.plan()
        assert any(c.address == "deployment/acme/chat" and c.action.value == "~" for c in plan.changes)
        _apply(eng)
        pids = _instance_pids(eng)
        assert victim not in pids and len(pids) == 2
        r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "again"}])
        assert r.choices[0].message.content == "echo: again"

        gone = eng.apply(eng.plan(destroy=True))
        assert gone.ok, gone.diagnostics
        assert eng.gateway_url() is None
        assert eng.executor.list_instances() == [] and _gateways(root) == []
    finally:
        stop_all(eng)
        eng.close()


def test_quality_gate_holds_the_deployment_on_the_previous_version(
    tmp_path: Path, engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsconf.engine import Engine

    monkeypatch.setenv("FAKE_GATE_FAIL_VERSION", "2")
    root = _stack(tmp_path / "s", epochs=2)
    eng = Engine(root, f"sqlite:///{tmp_path / 'state.db'}")
    try:
        _apply(eng)
        assert eng.store.resource("deployment/acme/chat").outputs["model_version"] == 1
        (pid,) = _instance_pids(eng)

        _stack(root, epochs=3)  # a new fine-tune -> bot v2, which fails the evaluation's gate
        result = _apply(eng)
        versions = {v.version: v.gate_status for v in eng.store.model_versions("acme", "bot")}
        assert versions == {1: None, 2: "failed"}
        dep = eng.store.resource("deployment/acme/chat")
        assert dep.outputs["model_version"] == 1 and _instance_pids(eng) == [pid]  # never restarted
        outcome = next(o for o in result.outcomes if o.address == "deployment/acme/chat")
        assert "v2 (rouge_l 0.1000 < 0.3) failed its quality gate; stays on v1" in outcome.message
        events = {e.event: e.message for e in eng.store.events()}
        assert "acme/bot v2 failed its quality gate: rouge_l 0.1000 < 0.3" in events["gate_failed"]
        assert "stays on v1" in events["gate_held"]
        plan = eng.plan()
        assert any("deployment/acme/chat: bot v2" in w and "stays on v1" in w for w in plan.warnings)
        assert not plan.actionable()
    finally:
        stop_all(eng)
        eng.close()


def test_upstream_key_made_once_by_parallel_deployments(tmp_path: Path) -> None:
    """Deployments applied in parallel ask for the internal key at once: one key, every server
    gets it (two used to be written, the loser's rename failing or its server getting a stale key)."""
    from concurrent.futures import ThreadPoolExecutor

    from zsconf.engine.gateway import gateway_dir, upstream_key

    for attempt in range(20):
        stack = tmp_path / f"s{attempt}"
        with ThreadPoolExecutor(8) as pool:
            keys = set(pool.map(upstream_key, [stack] * 8))
        assert len(keys) == 1 and (gateway_dir(stack) / "upstream.key").read_text() == keys.pop()
        assert [p.name for p in gateway_dir(stack).iterdir()] == ["upstream.key"]  # no temp left
