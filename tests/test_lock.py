"""The state lock between two real processes: contention, waiting, stale detection, force-unlock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_state

state_url = test_state.state_url  # fixture: SQLite and PostgreSQL

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


def test_stale_lock_reported_and_force_unlocked(state_url: str) -> None:
    from zsconf.errors import StateError, StateLockedError
    from zsconf.state import open_store

    proc, lock_id = _holder(state_url, 30)
    proc.kill()  # dies holding the lock
    proc.wait()
    store = open_store(state_url)
    info = store.lock_info()
    assert info is not None and info.stale
    with pytest.raises(StateLockedError, match=f"stale: process {proc.pid} is gone.*force-unlock {lock_id}"):
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
