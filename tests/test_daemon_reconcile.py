"""One reconcile pass in-process (`daemon.reconciler.Reconciler`) against a real SQLite state and
real server processes (tests/fake_runners), with a clock the test moves: a failed action is
retried with exponential backoff and holds back only its dependents; a person's `zsconf apply`
holding the state lock makes the pass skip and come back; a lock a dead daemon left is broken;
--no-auto-apply only reports.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import test_plan
from test_daemon_run import DEPLOY_STACK, events, serving
from test_plan import make_stack, stop_all

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH, start log

WITH_BROKEN = (
    DEPLOY_STACK.replace(
        "deployments:",
        "  broken: {base: debug/tiny-qwen2, path: later-model, validate_weights: false}\ndeployments:",
    )
    + "  chat2: {model: broken, engine: embedded, instances: 1}\n"
)


# Two deployments, each with its own group: chat2's server fails while FAKE_SERVE_FAIL exists.
TWO_CHATS = (
    DEPLOY_STACK
    + "  chat2: {model: base, engine: embedded, instances: 1}\n"
    + "service_groups:\n  app2: {services: [chat2], keys: 1}\n"
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _reconciler(stack: Path, **kw: Any) -> tuple[Any, Any, Clock]:
    from daemon.reconciler import Reconciler
    from zsconf.engine import Engine

    eng = Engine(stack)
    clock = Clock()
    return eng, Reconciler(eng, clock=clock, on_line=lambda line: None, **kw), clock


def test_failed_action_backs_off_without_blocking_unrelated(
    tmp_path: Path, engine_env: Path, monkeypatch: Any
) -> None:
    """A temporary failure (a server that dies at start: an environment fault) is retried with
    exponential backoff and holds back only its dependents."""
    from daemon.status import read_statuses

    flag = tmp_path / "fail"
    flag.write_text("chat2")
    monkeypatch.setenv("FAKE_SERVE_FAIL", str(flag))
    stack = make_stack(tmp_path / "s", TWO_CHATS)
    eng, rec, clock = _reconciler(stack)
    try:
        r1 = rec.run_pass("test")
        assert "deployment/acme/chat" in r1.applied and serving(eng.store, 1)  # unrelated: serving
        assert "did not become healthy" in r1.failed["deployment/acme/chat2"]
        assert r1.failed["service_group/acme/app2"].startswith("skipped")
        assert r1.retry_in == 5.0
        health = read_statuses(eng.store)["deployment/acme/chat2"]
        assert health.health == "Degraded" and "last apply failed" in health.reason
        # Within the backoff: not tried, and its dependent waits for it.
        clock.t += 1
        r2 = rec.run_pass("test")
        assert "deployment/acme/chat2" not in r2.applied and "deployment/acme/chat2" not in r2.failed
        assert r2.deferred["deployment/acme/chat2"].startswith("retry in 4 s after 1 failure(s)")
        assert r2.deferred["service_group/acme/app2"] == "waiting for deployment/acme/chat2"
        # Due: tried again, fails again, the delay doubles.
        clock.t += 4
        r3 = rec.run_pass("test")
        assert "deployment/acme/chat2" in r3.failed and r3.retry_in == 10.0
        delays = [e.data["delay_s"] for e in events(eng.store, "retry_scheduled", "deployment/acme/chat2")]
        assert delays == [5.0, 10.0]
        # The environment is fixed: picked up when the backoff ends, not before.
        flag.unlink()
        clock.t += 9
        assert "deployment/acme/chat2" not in rec.run_pass("test").applied
        clock.t += 1
        r5 = rec.run_pass("test")
        assert {"deployment/acme/chat2", "service_group/acme/app2"} <= set(r5.applied), r5
        assert serving(eng.store, 1, "deployment/acme/chat2")
    finally:
        stop_all(eng)
        eng.close()


def test_a_permanent_failure_waits_for_the_files_not_a_timer(tmp_path: Path, engine_env: Path) -> None:
    """A model folder without config.json cannot be fixed by retrying: no timed retries, the status
    says why; the folder appearing (a file of the stack changed) retries it at once, and so does a
    sync request."""
    from daemon.status import read_statuses

    stack = make_stack(tmp_path / "s", WITH_BROKEN)
    eng, rec, clock = _reconciler(stack)
    try:
        r1 = rec.run_pass("test")
        assert "deployment/acme/chat" in r1.applied and serving(eng.store, 1)  # unrelated: serving
        assert "later-model" in r1.failed["model/acme/broken"] and r1.retry_in is None
        st = read_statuses(eng.store)["model/acme/broken"]
        assert st.health == "Degraded" and "not retried until its spec or inputs change" in st.reason
        clock.t += 3600
        r2 = rec.run_pass("test")
        assert not r2.failed and "not retried until" in r2.deferred["model/acme/broken"]
        assert not events(eng.store, "retry_scheduled") and events(eng.store, "failed_permanently")
        rec.retry_now()  # a sync request tries it again (and it fails again)
        assert "model/acme/broken" in rec.run_pass("sync requested").failed
        (stack / "later-model").mkdir()
        (stack / "later-model" / "config.json").write_text('{"model_type": "qwen2"}')
        r3 = rec.run_pass("files changed")  # no clock change
        assert {"model/acme/broken", "deployment/acme/chat2"} <= set(r3.applied), r3
        assert rec.backoff == {}
    finally:
        stop_all(eng)
        eng.close()


def test_an_edit_resets_the_backoff(tmp_path: Path, engine_env: Path) -> None:
    stack = make_stack(tmp_path / "s", WITH_BROKEN)
    eng, rec, _ = _reconciler(stack)
    try:
        assert "model/acme/broken" in rec.run_pass("test").failed
        (stack / "base-copy").mkdir()
        (stack / "base-copy" / "config.json").write_text('{"model_type": "qwen2"}')
        (stack / "stack.yaml").write_text(WITH_BROKEN.replace("path: later-model", "path: base-copy"))
        r = rec.run_pass("files changed")  # no clock change: a new desire is tried at once
        assert "model/acme/broken" in r.applied and "deployment/acme/chat2" in r.applied
    finally:
        stop_all(eng)
        eng.close()


def test_a_persons_lock_skips_the_pass_and_a_dead_daemons_lock_is_broken(
    tmp_path: Path, engine_env: Path
) -> None:
    from zsconf.state.models import LockRow

    stack = make_stack(tmp_path / "s", DEPLOY_STACK)
    eng, rec, _ = _reconciler(stack)
    try:
        with eng.store.locked("apply"):
            r = rec.run_pass("test")
            assert r.skipped is not None and r.skipped.startswith("state locked by ")
            assert "'apply'" in r.skipped and r.retry_in == 2.0 and not r.applied
        r = rec.run_pass("test")
        assert "deployment/acme/chat" in r.applied
        # A daemon SIGKILLed mid-pass leaves its lock row; the pid is gone: taken over, not waited on.
        import subprocess
        import sys

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with eng.store.session() as s:
            s.add(
                LockRow(lock_id="old", operation="daemon", who="x", host=socket.gethostname(), pid=dead.pid)
            )
            s.commit()
        (stack / "stack.yaml").write_text(DEPLOY_STACK.replace("instances: 1", "instances: 2"))
        r = rec.run_pass("test")
        assert "deployment/acme/chat" in r.applied and events(eng.store, "lock_taken_over")
        assert eng.store.lock_info() is None
        # ...but a live person's lock of the same name on this host is waited for.
        with eng.store.session() as s:
            s.add(
                LockRow(
                    lock_id="live", operation="apply", who="x", host=socket.gethostname(), pid=os.getpid()
                )
            )
            s.commit()
        assert rec.run_pass("test").skipped
        eng.store.force_unlock("live")
    finally:
        stop_all(eng)
        eng.close()


def test_no_auto_apply_only_reports(tmp_path: Path, engine_env: Path) -> None:
    from daemon.status import read_statuses

    stack = make_stack(tmp_path / "s", DEPLOY_STACK)
    eng, rec, _ = _reconciler(stack, auto_apply=False)
    try:
        t0 = time.time()
        r = rec.run_pass("test")
        assert not r.applied and "auto-apply is off" in r.deferred["deployment/acme/chat"]
        assert eng.store.resources() == {} and not eng.store.runs()
        st = read_statuses(eng.store)["deployment/acme/chat"]
        assert (st.sync, st.health) == ("OutOfSync", "Missing") and st.since >= t0
        assert rec.last_plan is not None and rec.last_plan.actionable()
    finally:
        stop_all(eng)
        eng.close()
