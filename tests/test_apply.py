"""Apply tests: every action kind with real runner processes (tests/fake_runners), partial
applies, scaling, destroy, and kill -9 of apply at several points followed by a re-run that
finishes the work without starting anything twice (checked in the state and the process table).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_plan
import test_state
from test_plan import STACK, make_stack, stop_all

state_url = test_state.state_url  # fixture: SQLite and PostgreSQL
engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH, start log


def _live(run_ids: set[str]) -> dict[str, list[int]]:
    """run id -> pids of live fake runner processes working on it (the process table, not the
    state): a runner's argv ends with <workdir named after the run id>/spec.json."""
    out: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = [a.decode() for a in argv if a]
        if (
            state == "Z"
            or "zsconf.executors.wrap" in args
            or not any(a.startswith("fake_runners.") for a in args)
        ):
            continue
        rid = Path(args[-1]).parent.name
        if rid in run_ids:
            out.setdefault(rid, []).append(int(entry))
    return out


def _eventually(check: Any, seconds: float = 10.0) -> bool:
    """True once `check()` is (a started process needs a moment to exec its runner)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _wait_file(path: Path) -> str:
    import time

    for _ in range(200):
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    return ""


def _starts(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_apply_every_kind_then_scale_and_destroy(tmp_path: Path, state_url: str, engine_env: Path) -> None:
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s")
    eng = Engine(stack, state_url)
    try:
        result = eng.apply(eng.plan(), wait=True)
        assert result.ok, result.diagnostics
        assert result.counts()["added"] == 8
        st = eng.store
        data = (stack / "data" / "faq.jsonl").read_bytes()
        assert st.resource("dataset/acme/faq").outputs["sha256"] == hashlib.sha256(data).hexdigest()  # type: ignore[union-attr]
        (base,) = st.model_versions("acme", "base")
        assert base.version == 1 and base.path == str((stack / "base-model").resolve())
        (bot,) = st.model_versions("acme", "bot")
        assert bot.source_address == "finetune/acme/ft" and Path(bot.path, "config.json").exists()
        (botq,) = st.model_versions("acme", "bot-q")
        assert botq.quantization == "smoothquant-w8a8"
        # the compression's input was the fine-tune's output
        spec = (Path(st.last_run("compression/acme/cq").workdir) / "spec.json").read_text()  # type: ignore[union-attr]
        assert bot.path in spec
        ev = st.resource("evaluation/acme/ev")
        assert (
            ev is not None and ev.status == "succeeded" and ev.outputs["result"]["metrics"]["accuracy"] == 0.5
        )
        # deployment: one live server process of bot v1
        dep = st.resource("deployment/acme/chat")
        assert dep is not None and dep.outputs["model_version"] == 1
        (inst,) = dep.outputs["instances"]
        assert _eventually(lambda: list(_live({inst["run_id"]})) == [inst["run_id"]])
        port = _wait_file(Path(inst["workdir"]) / "ready")
        assert port and inst["endpoint"] == f"http://127.0.0.1:{port}"  # the port given to the server
        # keys: shown once, stored hashed only
        assert {k.address for k in result.new_keys} == {"service_group/acme/app"}
        secrets = [k.secret for k in result.new_keys]
        keys = st.api_keys("acme", "app")
        assert len(secrets) == 2 and len(keys) == 2
        assert {hashlib.sha256(s.encode()).hexdigest() for s in secrets} == {k.key_hash for k in keys}
        assert all(s.startswith("zs-") and len(s) == 43 for s in secrets)
        if state_url.startswith("sqlite"):
            raw = Path(state_url.removeprefix("sqlite:///")).read_bytes()
            for name in ("", "-wal"):
                p = Path(state_url.removeprefix("sqlite:///") + name)
                raw += p.read_bytes() if p.exists() else b""
            assert not any(s.encode() in raw for s in secrets)
        # scale out and in, in place
        (stack / "stack.yaml").write_text(STACK.replace("instances: 1", "instances: 2"))
        assert eng.apply(eng.plan()).ok
        ids = {i["run_id"] for i in st.resource("deployment/acme/chat").outputs["instances"]}  # type: ignore[union-attr]
        assert len(ids) == 2 and inst["run_id"] in ids  # the first one kept
        assert _eventually(lambda: len(_live(ids)) == 2)
        (stack / "stack.yaml").write_text(STACK)
        assert eng.apply(eng.plan()).ok
        assert _eventually(lambda: len(_live(ids)) == 1)
        # nothing left to do; destroy stops and revokes everything
        assert not eng.plan().actionable()
        gone = eng.apply(eng.plan(destroy=True))
        assert gone.ok and gone.counts()["destroyed"] == 8
        assert st.resources() == {} and _live(ids) == {}
        assert all(k.revoked_at is not None for k in st.api_keys("acme", "app"))
    finally:
        stop_all(eng)


def test_failed_job_is_a_partial_result(
    tmp_path: Path, state_url: str, engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsconf.engine import Engine

    monkeypatch.setenv("FAKE_FAIL", "1")
    eng = Engine(make_stack(tmp_path / "s"), state_url)
    try:
        result = eng.apply(eng.plan(), wait=True)
        assert not result.ok
        by = {o.address: o for o in result.outcomes}
        assert not by["finetune/acme/ft"].ok and "failed" in by["finetune/acme/ft"].message
        for dependent in ("compression/acme/cq", "evaluation/acme/ev", "deployment/acme/chat"):
            assert by[dependent].message == "skipped: a dependency failed"
        assert by["dataset/acme/faq"].ok and by["model/acme/base"].ok
        assert any(d.startswith("finetune/acme/ft:") for d in result.diagnostics)
        assert eng.store.resource("finetune/acme/ft").status == "failed"  # type: ignore[union-attr]
        assert eng.store.lock_info() is None  # the lock is released after a partial apply
    finally:
        stop_all(eng)


APPLY = """
import sys
from zsconf.engine import Engine
eng = Engine(sys.argv[1], sys.argv[2])
sys.exit(0 if eng.apply(eng.plan(), wait=True).ok else 1)
"""


@pytest.mark.parametrize(
    "point", ["after_intent", "after_start", "after_submit", "after_version", "after_instance_start"]
)
def test_kill_9_during_apply_then_rerun_starts_nothing_twice(
    tmp_path: Path, state_url: str, engine_env: Path, point: str
) -> None:
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s")
    env = {**os.environ, "ZSCONF_TEST_KILL_AT": point}
    killed = subprocess.run([sys.executable, "-c", APPLY, str(stack), state_url], env=env, timeout=120,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    eng = Engine(stack, state_url)
    try:
        info = eng.store.lock_info()
        assert info is not None and info.stale  # the dead apply's lock is reported stale...
        result = eng.apply(eng.plan(), wait=True)  # ...and the next apply takes it over
        assert [e.data["lock_id"] for e in eng.store.events(0) if e.event == "lock_taken_over"] == [
            info.lock_id
        ]
        assert result.ok, result.diagnostics
        assert not eng.plan().actionable()
        starts = _starts(engine_env)
        assert len(starts) == len(set(starts)), f"a run started twice: {starts}"
        runs = eng.store.runs()
        assert len(starts) == 4  # ft, cq, ev and one server instance
        assert {r.run_id for r in runs} == set(starts)
        for model in ("bot", "bot-q"):
            assert [v.version for v in eng.store.model_versions("acme", model)] == [1]
        live = _live({r.run_id for r in runs})
        assert all(len(p) == 1 for p in live.values()), live
    finally:
        stop_all(eng)


def _unused(_: Any) -> None:  # keeps imported fixtures referenced for linters
    _ = (state_url, engine_env)
