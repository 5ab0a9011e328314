"""The leader lease, on SQLite and a real PostgreSQL server (skipped cleanly without one):
compare-and-set acquire/renew/release, expiry, takeover from a dead daemon of this host, a race
with exactly one winner; then two real daemon processes on one store hand leadership over when
the leader is frozen (expiry) or killed (dead holder), and a frozen leader that wakes up stops
acting instead of fighting the new one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import test_daemon_run
import test_state
from test_apply import _starts
from test_daemon_run import DEPLOY_STACK, DaemonProc, cleanup, eventually, serving
from test_plan import make_stack

state_url = test_state.state_url  # fixture: SQLite and PostgreSQL
engine_env = test_daemon_run.engine_env  # fixture: fake runners on PYTHONPATH, start log


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_compare_and_set(state_url: str) -> None:
    from daemon.lease import Lease
    from zsconf.state import open_store

    a_store, b_store = open_store(state_url), open_store(state_url)
    try:
        a, b = Lease(a_store, lease_s=0.6), Lease(b_store, lease_s=0.6)
        assert a.acquire() and a.held  # first use: INSERT
        assert not b.acquire() and not b.held
        assert a.renew() and not b.acquire()
        info = b.info()
        assert info is not None and info.holder == a.holder
        time.sleep(0.7)  # a's term ran out (not renewed)
        assert not a.held  # its own clock says so before any database round trip
        assert b.acquire() and b.held
        assert not a.renew() and not a.held  # compare-and-set: the holder is b now
        b.release()
        assert not b.held and a.acquire()  # a released lease is free at once, not at expiry
        a.release()
    finally:
        a_store.close()
        b_store.close()


def test_lease_taken_from_a_dead_daemon_of_this_host_at_once(state_url: str) -> None:
    from sqlalchemy import update

    from daemon.lease import Lease
    from zsconf.state import LeaseRow, open_store

    store = open_store(state_url)
    try:
        a = Lease(store, lease_s=60)
        assert a.acquire()
        t = LeaseRow.__table__  # type: ignore[attr-defined]
        gone = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
        with store.engine.begin() as conn:  # as if a SIGKILLed daemon held it for another minute
            conn.execute(update(t).values(holder=gone, expires_at=time.time() + 60))
        b = Lease(store, lease_s=60)
        assert b.acquire()
        assert not a.renew()
        # A live holder on another host is not taken before it expires.
        with store.engine.begin() as conn:
            conn.execute(update(t).values(holder=f"elsewhere:{os.getpid()}:x", expires_at=time.time() + 60))
        assert not Lease(store, lease_s=60).acquire()
    finally:
        store.close()


def test_lease_race_has_one_winner(state_url: str) -> None:
    from daemon.lease import Lease
    from zsconf.state import open_store

    stores = [open_store(state_url) for _ in range(6)]
    try:
        leases = [Lease(s, lease_s=30) for s in stores]
        go = threading.Barrier(len(leases))
        won: list[bool] = [False] * len(leases)

        def race(i: int) -> None:
            go.wait()
            won[i] = leases[i].acquire()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(leases))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sum(won) == 1, won
    finally:
        for s in stores:
            s.close()


def test_two_daemons_on_one_store_hand_over_leadership(
    tmp_path: Path, state_url: str, engine_env: Path
) -> None:
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", DEPLOY_STACK)
    env = {**os.environ, "ZSCONF_STATE_URL": state_url}
    a = DaemonProc(stack, env=env, name="a")
    daemons = [a]
    eng = Engine(stack, state_url)
    st = eng.store
    try:
        a.wait_line("leading")
        eventually(lambda: serving(st, 1), what="one instance serving")
        b = DaemonProc(stack, env=env, name="b")
        daemons.append(b)
        b.wait_line("standing by")
        # A frozen leader (SIGSTOP) stops renewing: b takes over once the 3 s lease expires.
        os.kill(a.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        b.wait_line("leading", seconds=20)
        took = time.monotonic() - t0
        print(f"handover after the leader froze: {took:.1f} s (lease 3 s, standby retry 1 s)")
        assert took < 10.0, took  # the lease period plus a retry, with room for a busy machine
        # The new leader acts on edits.
        (stack / "stack.yaml").write_text(DEPLOY_STACK.replace("instances: 1", "instances: 2"))
        eventually(lambda: serving(st, 2), what="two instances from the new leader")
        # The old leader wakes: it finds it lost the lease and stands by instead of acting.
        os.kill(a.pid, signal.SIGCONT)
        a.wait_line("lost the leader lease", seconds=20)
        time.sleep(1.0)
        starts = _starts(engine_env)
        assert len(starts) == len(set(starts)) == 2, starts
        # The new leader is killed: the standby on this host takes over at once (pid gone).
        b.kill()
        t0 = time.monotonic()
        eventually(lambda: a.text().count("leading (lease") == 2, 20, "a to lead again")
        print(f"takeover from a killed leader on this host: {time.monotonic() - t0:.1f} s")
        assert serving(st, 2) is not None
        assert a.terminate() == 0
        assert len(_starts(engine_env)) == 2
    finally:
        for d in daemons:  # a stopped process ignores SIGKILL's delivery until continued
            if d.proc.poll() is None:
                os.kill(d.pid, signal.SIGCONT)
        cleanup(daemons, stack, state_url)
        eng.close()
