"""The state lock between two real processes: contention, waiting, stale detection, force-unlock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_plan
import test_state

state_url = test_state.state_url  # fixture: SQLite and PostgreSQL
engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH

HOLDER = """
import sys, time
from zsconf.state import open_store
store = open_store(sys.argv[1])
lock = store.acquire_lock("apply")
print(lock, flush=True)
time.sleep(float(sys.argv[2]))
store.release_lock(lock)
"""


def _holder(url: str, seconds: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lock_id = proc.stdout.readline().strip()
    assert lock_id, "holder did not take the lock"
    return proc, lock_id


def test_second_locker_fails_at_once_naming_the_holder(state_url: str) -> None:
    from zsconf.errors import StateLockedError
    from zsconf.state import open_store

    proc, lock_id = _holder(state_url, 30)
    try:
        store = open_store(state_url)
        t0 = time.monotonic()
        with pytest.raises(StateLockedError) as err:
            store.acquire_lock("apply")
        assert time.monotonic() - t0 < 2
        msg = str(err.value)
        assert lock_id in msg and f"pid {proc.pid}" in msg and "'apply'" in msg and "stale" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_waiting_locker_gets_the_lock_when_released(state_url: str) -> None:
    from zsconf.state import open_store

    proc, _ = _holder(state_url, 1.0)
    try:
        store = open_store(state_url)
        lock = store.acquire_lock("apply", timeout=30)
        assert store.lock_info().lock_id == lock  # type: ignore[union-attr]
        store.release_lock(lock)
        assert store.lock_info() is None
    finally:
        proc.wait(timeout=10)


def test_lock_of_a_dead_holder_is_taken_over_and_said(state_url: str) -> None:
    from zsconf.state import open_store

    proc, lock_id = _holder(state_url, 30)
    proc.kill()  # dies holding the lock
    proc.wait()
    store = open_store(state_url)
    info = store.lock_info()
    assert info is not None and info.stale and info.lock_id == lock_id
    mine = store.acquire_lock("apply")  # at once: the holder is provably dead
    assert mine != lock_id and store.lock_info().lock_id == mine  # type: ignore[union-attr]
    (ev,) = [e for e in store.events(0) if e.event == "lock_taken_over"]
    assert lock_id in ev.message and f"pid {proc.pid}" in ev.message
    store.release_lock(mine)


def _foreign_lock(store: object, host: str, pid: int, start_time: float | None) -> str:
    from zsconf.state.models import LockRow

    with store.session() as s:  # type: ignore[attr-defined]
        s.add(LockRow(lock_id="held-elsewhere", operation="apply", who="ops", host=host, pid=pid,
                      start_time=start_time))  # fmt: skip
        s.commit()
    return "held-elsewhere"


def test_reused_pid_is_dead_but_another_host_or_a_live_holder_is_not(state_url: str) -> None:
    import os
    import socket

    from zsconf.errors import StateError, StateLockedError
    from zsconf.executors.procs import process_start_time
    from zsconf.state import open_store

    store = open_store(state_url)
    # Our own pid with another start time: the pid was reused, the holder is gone.
    _foreign_lock(store, socket.gethostname(), os.getpid(), 1.0)
    store.release_lock(store.acquire_lock("apply"))
    # Alive here (our pid, our start time): refused, and not stale.
    lock_id = _foreign_lock(store, socket.gethostname(), os.getpid(), process_start_time(os.getpid()))
    with pytest.raises(StateLockedError, match="held by ops@"):
        store.acquire_lock("apply")
    assert store.lock_info().stale is False  # type: ignore[union-attr]
    store.force_unlock(lock_id)
    # On another host nothing proves the holder dead: refused, with the way out named.
    lock_id = _foreign_lock(store, "some-other-host", 999999, 5.0)
    with pytest.raises(StateLockedError, match=f"force-unlock {lock_id}"):
        store.acquire_lock("apply")
    with pytest.raises(StateError, match="does not match"):
        store.force_unlock("not-the-id")
    store.force_unlock(lock_id)
    store.release_lock(store.acquire_lock("apply"))


def test_force_unlock_cli(tmp_path: Path) -> None:
    from zsconf.state import open_store

    store = open_store(None, tmp_path)
    lock_id = store.acquire_lock("apply")
    env_url = f"sqlite:///{tmp_path / '.zsconf' / 'state.db'}"
    out = subprocess.run([sys.executable, "-m", "zsconf.cli.main", "force-unlock", lock_id, "-C", str(tmp_path)],
                         capture_output=True, text=True, env={**__import__("os").environ, "ZSCONF_STATE_URL": env_url})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert store.lock_info() is None


def test_second_apply_cli_fails_at_once_then_waits_with_lock_timeout(tmp_path: Path) -> None:
    import os

    from test_plan import make_stack

    stack = make_stack(tmp_path / "s", "platform: {default_tenant: acme}\ntenants:\n  acme: {}\n")
    url = f"sqlite:///{tmp_path / 'state.db'}"
    env = {**os.environ, "ZSCONF_STATE_URL": url}
    argv = [sys.executable, "-m", "zsconf.cli.main", "apply", str(stack), "--auto-approve"]
    proc, lock_id = _holder(url, 3)
    try:
        t0 = time.monotonic()
        busy = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert busy.returncode == 1
        assert (
            "state is locked" in busy.stderr and lock_id in busy.stderr and f"pid {proc.pid}" in busy.stderr
        )
        assert time.monotonic() - t0 < 10  # failed at once (process start-up included)
        waited = subprocess.run(
            [*argv, "--lock-timeout", "30s"], capture_output=True, text=True, env=env, timeout=60
        )
        assert waited.returncode == 0, waited.stderr
        assert "Apply complete! Resources: 1 added" in waited.stdout
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_apply_cli_leaves_a_lock_the_next_apply_takes_over(tmp_path: Path, engine_env: Path) -> None:
    """`zsconf apply` SIGKILLed while it holds the lock (right after a job's intent: a crash
    point): the next `zsconf apply` takes the lock over at once, says so in one line, finishes."""
    import os

    from test_plan import STACK, make_stack, stop_all

    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", STACK.split("service_groups:")[0])
    argv = [sys.executable, "-m", "zsconf.cli.main", "apply", str(stack), "--auto-approve"]
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "ZSCONF_TEST_KILL_AT": "after_intent"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    try:
        again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        (line,) = [x for x in again.stderr.splitlines() if "took over the state lock" in x]
        assert line.startswith("warning: ") and "for 'apply'" in line
        assert "Traceback" not in again.stderr and "Apply complete!" in again.stdout
    finally:
        eng = Engine(stack)
        stop_all(eng)
        eng.close()
