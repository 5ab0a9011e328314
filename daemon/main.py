"""The daemon's main loop: lead (or stand by), wake, reconcile, repeat; shut down cleanly.

Called by `zsconf daemon` and `zsconf up` (`run_daemon`). One thread runs the passes
(`daemon.reconciler.Reconciler`); around it:

- wake-ups: a debounced file change (`daemon.watch.StackWatcher`), the drift interval, a sync the
  admin API asks for, and a run that ended or an instance that died. The last is noticed by a cheap
  poll (~1 s) of the pids of the runs the last pass left active (/proc reads, no database query and
  no plan), so a job's end starts its dependents within a second without a full pass per second.
- leadership: the lease (`daemon.lease.Lease`) on the state store. A standby tries it every
  lease_s/3 and takes over within a lease period after the leader dies (at once when the dead
  leader was on this host). The leader renews on a thread; when a renew fails it stops acting at
  once and goes back to standby.
- the admin API (`daemon.admin.AdminServer`) and the discovery file
  `<stack>/.zsconf/daemon.json` the CLI finds it by.

SIGTERM / SIGINT: stop accepting admin calls, let the current pass finish, release the lease,
remove the discovery file, exit 0. Jobs, model servers and the gateway are left running (they run
in their own sessions); the next daemon re-adopts them by pid and start time from the runs table.
After SIGKILL the engine's intent rows make the next daemon start nothing twice, and the lock the
dead daemon held is broken by its successor (same host: its pid is gone; elsewhere: after the
successor has led for a lease period).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.admin import AdminServer, admin_token, remove_discovery, write_discovery
from daemon.notify import Notifier
from zsconf.executors.procs import pid_running, process_start_time

if TYPE_CHECKING:
    from zsconf.executors import Executor

__all__ = ["DaemonState", "run_daemon"]

log = logging.getLogger("zsconf.daemon")

RUN_POLL_S = 1.0  # how often the pids of active runs are checked (cheap: /proc reads)


class _RunPoller:
    """Notices, between passes, that a run the last pass left active has ended (pid gone) or that
    a queued job could start, without a plan or a database query per tick."""

    def __init__(self, store: Any, executor: Executor) -> None:
        self.store = store
        self.executor = executor
        self._procs: dict[str, tuple[int, float]] = {}
        self._queued: list[str] = []
        self._reported: set[str] = set()

    def reload(self) -> None:
        """Read the active runs again (after every pass)."""
        procs: dict[str, tuple[int, float]] = {}
        queued: list[str] = []
        for run in self.store.active_runs():
            if run.pid and run.start_time is not None:
                procs[run.run_id] = (run.pid, run.start_time)
            elif run.status == "queued":
                queued.append(run.run_id)
        self._procs, self._queued = procs, queued
        self._reported &= set(procs)

    def check(self) -> str | None:
        """A reason for a pass now, or None."""
        for run_id, (pid, start) in self._procs.items():
            if run_id in self._reported:
                continue  # a pass saw it already; do not loop on a run the state keeps active
            if process_start_time(pid) != start:
                self._reported.add(run_id)
                return f"run {run_id} ended"
        if self._queued:
            many = getattr(self.executor, "observe_many", None)
            if many is not None:
                for run_id, obs in many(self._queued).items():
                    if obs.state != "queued":
                        self._queued = []
                        return f"run {run_id} left the queue"
        return None


class DaemonState:
    """What the admin API sees of the daemon (`daemon.admin.DaemonView`)."""

    def __init__(self, stack_dir: Path, store: Any, reconciler: Any, lease: Any, wake: Callable[[], None]):
        self.stack_dir = stack_dir
        self.store = store
        self._reconciler = reconciler
        self._lease = lease
        self._wake = wake
        self._requests: list[str] = []
        self._lock = threading.Lock()

    def current_plan(self) -> Any:
        return self._reconciler.last_plan

    def trigger_sync(self, reason: str = "sync requested") -> None:
        self._reconciler.retry_now()
        with self._lock:
            self._requests.append(reason)
        self._wake()

    def take_requests(self) -> list[str]:
        with self._lock:
            out, self._requests = self._requests, []
        return out

    def is_leader(self) -> bool:
        return bool(self._lease.held)

    # What the console adds to the admin API's view (daemon.console reads these when present).
    def last_pass(self) -> Any:
        """The reconciler's last PassResult and when it ended (epoch seconds), or None."""
        done = self._reconciler.last_pass
        return None if done is None else (done, self._reconciler.last_pass_at)

    def gateway_url(self) -> str | None:
        return self._reconciler.engine.gateway_url()

    @property
    def executor(self) -> Any:
        return self._reconciler.engine.executor


@functools.cache
def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _default_line(line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    _stderr().print(f"[dim]{stamp}[/dim] ", end="", markup=True)
    _stderr().print(line, markup=False, highlight=False)


def run_daemon(
    stack_dir: str | Path,
    *,
    interval: float = 30.0,
    prune: bool = False,
    auto_apply: bool = True,
    lease_s: float = 15.0,
    admin_port: int | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    servers_stop_after: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the exit code (0 on a clean stop).

    `admin_port` None or 0 binds a free port on 127.0.0.1. `on_ready(info)` is called once the
    daemon is up and has led its first pass or found another leader: info has pid, admin_url,
    leader, stack_dir, gateway_url. `on_line(text)` gets one line per action (default: stderr).
    `servers_stop_after`: the caller (`zsconf up`) stops the gateway and model servers once this
    returns, and the stop messages say so instead of promising they keep running."""
    from daemon.lease import Lease
    from daemon.reconciler import Reconciler
    from daemon.watch import StackWatcher
    from zsconf.engine import Engine

    say = on_line or _default_line
    left = (
        "jobs keep running; the gateway and model servers are stopped next"
        if servers_stop_after
        else "jobs, model servers and the gateway keep running"
    )
    stack = Path(stack_dir).resolve()
    if not (stack / "stack.yaml").exists():
        from zsconf.errors import Diagnostic, StackError

        raise StackError([Diagnostic(str(stack / "stack.yaml"), None, "", "no stack.yaml in this directory")])
    stop = stop or threading.Event()
    engine = Engine(stack)
    store = engine.store
    watcher = StackWatcher(stack).start()
    lease = Lease(store, lease_s)
    notifier = Notifier()

    def leading_long() -> bool:
        return lease.acquired_at is not None and time.monotonic() - lease.acquired_at >= lease_s

    reconciler = Reconciler(
        engine, prune=prune, auto_apply=auto_apply, notifier=notifier,
        should_act=lambda: lease.held,  # after SIGTERM the pass in progress still finishes
        break_daemon_locks=leading_long, on_line=say,
    )  # fmt: skip
    state = DaemonState(stack, store, reconciler, lease, watcher.poke)
    admin = _start_admin(state, stack, admin_port, say)
    admin_url = admin.url if admin is not None else None
    started_at = time.time()

    def discovery(leader: bool) -> None:
        if not leader and _other_daemon_there(stack):
            return  # a standby sharing this directory leaves the leader's discovery file alone
        write_discovery(stack, {"pid": os.getpid(), "start_time": _own_start_time(),
                                 "admin_url": admin_url, "leader": leader, "started_at": started_at,
                                 "lease_holder": lease.holder})  # fmt: skip

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            say(f"{signal.Signals(signum).name}: finishing the current pass, then stopping ({left})")
        stop.set()
        watcher.poke()
        if admin is not None:  # stop accepting admin calls now, not after the pass
            threading.Thread(target=admin.stop, name="zsconf-admin-stop", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    discovery(False)
    say(f"zsconf daemon for {stack} (pid {os.getpid()}, state {store.display_url}, "
        f"interval {interval:g} s, prune {'on' if prune else 'off'}, "
        f"auto-apply {'on' if auto_apply else 'off'}, lease {lease_s:g} s"
        + (f", admin {admin_url}" if admin_url else "") + ")")  # fmt: skip
    poller = _RunPoller(store, engine.executor)
    ready_sent = False
    leader = False
    standby_said: str | None = None
    pending: list[str] = ["start"]
    next_full = 0.0
    retry_at: float | None = None
    try:
        while not stop.is_set():
            if not lease.held:
                if leader:
                    say("lost the leader lease: stopped acting; standing by")
                    with contextlib.suppress(Exception):
                        store.add_event("leader_lost", f"daemon {lease.holder} lost the lease", None)
                    leader = False
                    discovery(False)
                if lease.acquire():
                    leader = True
                    standby_said = None
                    lease.start_renewing()
                    say(f"leading (lease {lease.holder})")
                    store.add_event("leader", f"daemon {lease.holder} leads", None, holder=lease.holder)
                    discovery(True)
                    pending.append("became leader")
                else:
                    info = lease.info()
                    who = info.holder if info else "?"
                    if who != standby_said:
                        say(f"standing by: {info.describe() if info else 'another daemon'} leads")
                        standby_said = who
                    if not ready_sent:
                        ready_sent = _ready(on_ready, stack, admin_url, False, engine)
                    stop.wait(lease_s / 3)
                    state.take_requests()  # a standby does not reconcile
                    continue
            now = time.monotonic()
            if pending or now >= next_full or (retry_at is not None and now >= retry_at):
                reason = ", ".join(dict.fromkeys(pending)) or (
                    "retry" if retry_at and now >= retry_at else "interval"
                )
                pending = []
                result = reconciler.run_pass(reason)
                _summarise(result, say)
                next_full = time.monotonic() + interval
                retry_at = time.monotonic() + result.retry_in if result.retry_in is not None else None
                with contextlib.suppress(Exception):
                    poller.reload()
                if not ready_sent:
                    say(f"ready: first pass in {result.seconds:.2f} s")
                    ready_sent = _ready(on_ready, stack, admin_url, True, engine)
                continue
            wait_s = min(RUN_POLL_S, max(0.0, next_full - now))
            if retry_at is not None:
                wait_s = min(wait_s, max(0.0, retry_at - now))
            if watcher.wait(wait_s):
                pending.append("files changed")
            for why in state.take_requests():
                say(f"sync requested: {why}")
                pending.append(why)
            if not pending and lease.held:
                with contextlib.suppress(Exception):
                    why = poller.check()
                    if why:
                        pending.append(why)
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.stop()
        watcher.stop()
        if lease.held:
            lease.release()
            with contextlib.suppress(Exception):
                store.add_event("leader_released", f"daemon {lease.holder} stopped", None)
        else:
            lease.stop_renewing()
        with contextlib.suppress(Exception):
            notifier.close(timeout_s=2.0)
        remove_discovery(stack, os.getpid())
        engine.close()
        say(f"daemon stopped; {left}")
    return 0


def _summarise(result: Any, say: Callable[[str], None]) -> None:
    if (
        result.skipped
        and result.skipped != "not the leader"
        and not result.skipped.startswith("state locked")
    ):
        say(f"pass ({result.reason}) skipped: {result.skipped}")
        return
    bits = []
    if result.applied:
        bits.append(f"{len(result.applied)} applied")
    if result.failed:
        bits.append(f"{len(result.failed)} failed")
    if result.deferred:
        bits.append(f"{len(result.deferred)} waiting")
    if result.orphans:
        bits.append(f"{len(result.orphans)} orphan(s)")
    if bits:
        say(f"pass ({result.reason}) in {result.seconds:.2f} s: {', '.join(bits)}")
        for addr, why in sorted(result.deferred.items()):
            say(f"  {addr} waits: {why}")


def _ready(cb: Callable[[dict[str, Any]], None] | None, stack: Path, admin_url: str | None,
           leader: bool, engine: Any) -> bool:  # fmt: skip
    if cb is not None:
        gw = None
        with contextlib.suppress(Exception):
            gw = engine.gateway_url()
        cb({"pid": os.getpid(), "admin_url": admin_url, "leader": leader, "stack_dir": str(stack),
            "gateway_url": gw})  # fmt: skip
    return True


def _other_daemon_there(stack: Path) -> bool:
    import json

    try:
        pid = int(json.loads((stack / ".zsconf" / "daemon.json").read_text()).get("pid"))
    except (OSError, ValueError, TypeError):
        return False
    return pid != os.getpid() and pid_running(pid)


def _own_start_time() -> float | None:
    return process_start_time(os.getpid())


def _start_admin(view: DaemonState, stack: Path, port: int | None, say: Callable[[str], None]) -> Any:
    try:
        return AdminServer(view, "127.0.0.1", port or 0, admin_token(stack)).start()
    except Exception as exc:  # a taken port: the daemon still reconciles
        say(f"admin API not started: {type(exc).__name__}: {exc}")
        return None
