"""One reconcile pass, level-triggered: what the daemon does each time something may have changed.

Called by `daemon.main` (on a file change, the drift interval, an admin-triggered sync, a run that
ended) and by tests. Every pass recomputes from scratch, with no edge-triggered bookkeeping beyond
the retry backoff of failed actions:

    finish_runs -> supervise_jobs -> plan -> set aside orphans (unless --prune), resources in
    backoff and their dependents, and dependents of jobs still running -> apply the rest (under the
    state lock, taken without waiting) -> sync the gateway -> statuses -> deliver webhooks

A pass never raises for what the world or the files did (kopf's rule: the loop belongs to the
framework, user input cannot break it). A stack that does not load is recorded (status Unknown
with the error naming file and line, one `plan_error` event) while everything already running
keeps running; a failed action is retried with exponential backoff (5 s doubling to 5 min) and
holds back only its own dependents; a state lock held by a person's `zsconf apply` makes the pass
skip and come back in a moment. The outcome of a pass is a frozen `PassResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.notify import deliver_events
from daemon.status import compute_statuses, record_statuses
from zsconf.engine.apply import gating_evaluations
from zsconf.engine.jobs import supervise_jobs
from zsconf.errors import StateLockedError, ZsconfError
from zsconf.names import JOB_KINDS
from zsconf.plans import Action, Change, Plan

__all__ = ["BACKOFF_MAX_S", "BACKOFF_START_S", "PassResult", "Reconciler"]

log = logging.getLogger("zsconf.daemon")

BACKOFF_START_S = 5.0
BACKOFF_MAX_S = 300.0
LOCK_RETRY_S = 2.0  # a person's apply holds the lock: look again this soon


@dataclass(frozen=True)
class PassResult:
    """What one pass did. `skipped` says why nothing was attempted (not the leader, state locked);
    `retry_in` is the latest the next pass should come (a backoff or the lock ending), if any."""

    reason: str
    seconds: float = 0.0
    skipped: str | None = None
    plan_error: str | None = None
    applied: dict[str, str] = field(default_factory=dict)  # address -> outcome message
    failed: dict[str, str] = field(default_factory=dict)  # address -> error (this pass)
    orphans: tuple[str, ...] = ()
    deferred: dict[str, str] = field(default_factory=dict)  # address -> why it waits
    actions: tuple[str, ...] = ()  # supervision, finished runs, gateway: one line each
    transitions: int = 0  # status transitions recorded
    retry_in: float | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.plan_error is None and not self.failed


@dataclass
class _Backoff:
    key: str  # what failed (action + desired content): a new desire is tried at once
    failures: int
    until: float  # monotonic; inf for a permanent failure
    message: str
    permanent: bool = False  # retried only when `key` or `files` change, or a sync is requested
    files: tuple[Any, ...] = ()  # the stack's files when it failed (Engine.files_fingerprint)

    def why(self) -> str:
        if self.permanent:
            return f"failed, not retried until its spec or inputs change (or a sync request): {self.message}"
        return self.message


class Reconciler:
    """Holds what must outlive a pass (backoff, last plan, last reported errors); `run_pass` does
    the rest from scratch. Not thread-safe by itself: `daemon.main` runs one pass at a time."""

    def __init__(
        self,
        engine: Any,
        prune: bool = False,
        auto_apply: bool = True,
        notifier: Any = None,
        *,
        should_act: Callable[[], bool] | None = None,
        break_daemon_locks: Callable[[], bool] | None = None,
        on_line: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.prune = prune
        self.auto_apply = auto_apply
        self.notifier = notifier
        # Asked before every step that acts: a daemon that lost its lease stops at once.
        self.should_act = should_act or (lambda: True)
        # Whether a lock another daemon left ("daemon" operation) may be broken: the caller says
        # so once it has led for a lease period (the old leader cannot be acting any more).
        self.break_daemon_locks = break_daemon_locks or (lambda: False)
        self.on_line = on_line or (lambda line: log.info("%s", line))
        self.clock = clock
        self.backoff: dict[str, _Backoff] = {}
        self.last_plan: Plan | None = None
        self.last_pass: PassResult | None = None
        self.last_pass_at = 0.0  # epoch seconds when last_pass ended
        self._plan_error: str | None = None
        self._orphans: set[str] = set()
        self._lock_holder: str | None = None
        self._mutex = threading.Lock()
        self._retry_now = threading.Event()

    def retry_now(self) -> None:
        """A person asked for a sync (admin API): the next pass retries every failed action now,
        permanent failures included (the world they depend on may have been fixed by hand)."""
        self._retry_now.set()

    # -- the pass ----------------------------------------------------------------------------
    def run_pass(self, reason: str) -> PassResult:
        with self._mutex:
            t0 = time.monotonic()
            try:
                result = self._pass(reason)
            except Exception as exc:  # a bug or an unreachable store: report, never crash the loop
                log.exception("reconcile pass failed")
                msg = f"{type(exc).__name__}: {exc}"
                self._event("daemon_error", f"reconcile pass failed: {msg}")
                result = PassResult(reason, skipped=f"error: {msg}", retry_in=BACKOFF_START_S)
            result = dataclasses.replace(result, seconds=time.monotonic() - t0)
            self.last_pass, self.last_pass_at = result, time.time()
            return result

    def _pass(self, reason: str) -> PassResult:
        if not self.should_act():
            return PassResult(reason, skipped="not the leader")
        lock_id = self._take_lock()
        if lock_id is None:
            return PassResult(reason, skipped=f"state locked by {self._lock_holder}", retry_in=LOCK_RETRY_S)
        lines: list[str] = []
        plan: Plan | None = None
        plan_error: str | None = None
        applied: dict[str, str] = {}
        failed: dict[str, str] = {}
        deferred: dict[str, str] = {}
        orphans: set[str] = set()

        def note(new: list[str]) -> None:
            for line in new:
                self.on_line(line)
            lines.extend(new)

        try:
            note(self._finish_runs())
            note(self._supervise())
            plan, plan_error = self._plan()
            if plan is not None:
                orphans = self._orphans_of(plan)
                todo, deferred = self._select(plan, orphans)
                if todo and self.should_act():
                    # What is about to change reads Progressing while the apply runs (a scale-up
                    # waits for new instances): not the last pass's Synced/Healthy.
                    self._statuses(plan, orphans, None, applying=frozenset(c.address for c in todo))
                    applied, failed = self._apply(plan, todo)
                    if applied or failed:
                        note(self._finish_runs())  # jobs that ended while apply ran
                        # Statuses and the admin API show the world after this apply, not before.
                        plan, plan_error = self._plan()
                        if plan is not None:
                            orphans = self._orphans_of(plan)
            if self.should_act():
                note(self._sync_gateway())
        finally:
            self.store.release_lock(lock_id)
        self.last_plan = plan if plan is not None else self.last_plan
        self._report_plan_error(plan_error)
        self._report_orphans(orphans)
        transitions = self._statuses(plan, orphans, plan_error) if self.should_act() else 0
        self._deliver()
        retry = [b.until - self.clock() for b in self.backoff.values() if not b.permanent]
        return PassResult(
            reason,
            plan_error=plan_error,
            applied=applied,
            failed=failed,
            orphans=tuple(sorted(orphans)),
            deferred=deferred,
            actions=tuple(lines),
            transitions=transitions,
            retry_in=max(0.0, min(retry)) if retry else None,
        )

    # -- steps -------------------------------------------------------------------------------
    def _take_lock(self) -> str | None:
        """The state lock without waiting; None when someone else holds it. A lock whose holder
        died on this host is taken over by the store; one left by a daemon that lost its lead
        (on any host) is broken here once this daemon has led a lease period; a person's is not."""
        for _ in range(2):
            try:
                lock_id = self.store.acquire_lock("daemon", 0.0)
                if self._lock_holder is not None:
                    self.on_line("state lock free again; reconciling")
                self._lock_holder = None
                return lock_id
            except StateLockedError:
                info = self.store.lock_info()
                if info is None:
                    continue  # released in between
                if info.operation == "daemon" and self.break_daemon_locks():
                    self.store.force_unlock(info.lock_id)
                    self.on_line(f"broke the lock a previous daemon left ({info.describe()})")
                    self._event("lock_broken", f"broke the lock a previous daemon left: {info.describe()}")
                    continue
                holder = info.describe()
                if holder != self._lock_holder:
                    self.on_line(f"waiting: {holder}")
                self._lock_holder = holder
                return None
        return None

    def _finish_runs(self) -> list[str]:
        from zsconf.engine.runs import finish_runs

        # The module function, not Engine.finish_runs: that one takes the lock, which we hold.
        done = finish_runs(self.store, self.engine.executor)
        out = []
        for run_id in done:
            run = self.store.run(run_id)
            if run is not None:
                err = f": {run.error}" if run.error and run.status != "succeeded" else ""
                out.append(f"{run.address}: run {run_id} {run.status}{err}")
        return out

    def _supervise(self) -> list[str]:
        return supervise_jobs(self.store, self.engine.executor)

    def _plan(self) -> tuple[Plan | None, str | None]:
        try:
            plan = self.engine.plan()
        except ZsconfError as exc:
            return None, str(exc)
        if not plan.can_apply():
            return plan, "; ".join(plan.errors)
        return plan, None

    def _orphans_of(self, plan: Plan) -> set[str]:
        if self.prune:
            return set()
        return {c.address for c in plan.changes if c.action is Action.DELETE}

    def _select(self, plan: Plan, orphans: set[str]) -> tuple[list[Change], dict[str, str]]:
        """The changes to apply now, and why each other actionable one waits."""
        if plan.errors:
            return [], {c.address: "the plan has errors" for c in plan.actionable()}
        changes = {c.address: c for c in plan.actionable() if c.address not in orphans}
        now = self.clock()
        if self._retry_now.is_set():
            self._retry_now.clear()
            self.backoff.clear()
        files = self.engine.files_fingerprint() if any(b.permanent for b in self.backoff.values()) else ()
        held: dict[str, str] = {}
        for addr, ch in changes.items():
            b = self.backoff.get(addr)
            if b is None:
                continue
            if b.key != _key(ch):
                del self.backoff[addr]  # the files changed what is wanted: try it at once
            elif b.permanent and b.files != files:
                del self.backoff[addr]  # a file of the stack changed (a model folder appeared): again
            elif b.permanent:
                held[addr] = b.why()
            elif now < b.until:
                held[addr] = f"retry in {b.until - now:.0f} s after {b.failures} failure(s): {b.message}"
        for addr in set(self.backoff) - set(changes):
            del self.backoff[addr]  # nothing to do for it any more (fixed, removed, or done)
        rows = self.store.resources()
        # Jobs running (from this pass or an earlier one) produce their dependents' inputs: the
        # dependents wait for a later pass instead of blocking this one until the job ends.
        starts = (Action.CREATE, Action.REPLACE)  # an in-place update of a job runs nothing
        producing = {
            a for a, r in rows.items() if r.kind in JOB_KINDS and r.status in ("running", "pending")
        } | {a for a, c in changes.items() if c.kind in JOB_KINDS and c.action in starts}
        gated = gating_evaluations(changes)
        deferred: dict[str, str] = dict(held)
        if not self.auto_apply:
            return [], {a: "auto-apply is off (zsconf apply, or restart without --no-auto-apply)"
                        for a in changes} | {a: "orphan" for a in orphans}  # fmt: skip
        blocked = set(held)
        # Creates/updates in dependency order: a change waits when what it depends on waits.
        for addr in _topo(changes):
            ch = changes[addr]
            if addr in blocked or ch.action is Action.DELETE:
                continue
            # A deployment also waits for the gated evaluations of the version it would serve.
            deps = set(ch.dependencies) | gated.get(addr, set())
            waiting = sorted(deps & blocked)
            if waiting:
                deferred[addr] = f"waiting for {', '.join(waiting)}"
                blocked.add(addr)
                continue
            running = sorted(d for d in deps & producing)
            if running:
                deferred[addr] = f"waiting for {', '.join(running)} to finish"
                blocked.add(addr)
        todo = [c for a, c in changes.items() if a not in blocked]
        return todo, deferred

    def _apply(self, plan: Plan, todo: list[Change]) -> tuple[dict[str, str], dict[str, str]]:
        keep = {c.address for c in todo}
        filtered = dataclasses.replace(
            plan, changes=[c for c in plan.changes if c.address in keep or c.action is Action.NOOP]
        )
        for c in todo:
            self.on_line(f"{c.action.value} {c.address}: {'; '.join(c.reasons) or c.action.verb}")
        result = self.engine.apply(filtered, locked=True, wait=False)
        applied: dict[str, str] = {}
        failed: dict[str, str] = {}
        by_addr = {c.address: c for c in todo}
        for o in result.outcomes:
            if o.ok:
                applied[o.address] = o.message
                self.backoff.pop(o.address, None)
                self.on_line(f"  {o.address}: {o.message or 'done'} ({o.seconds:.1f} s)")
                continue
            failed[o.address] = o.message
            if o.skipped:
                self.on_line(f"  {o.address}: {o.message}")
                continue  # it waits on its failed dependency's backoff, not one of its own
            prev = self.backoff.get(o.address)
            if o.permanent:
                b = _Backoff(_key(by_addr[o.address]), (prev.failures + 1) if prev else 1, math.inf, o.message,
                             permanent=True, files=self.engine.files_fingerprint())  # fmt: skip
                self.backoff[o.address] = b
                self.on_line(
                    f"  {o.address}: FAILED {o.message} (not retried until its spec or inputs change)"
                )
                self._event("failed_permanently", b.why(), o.address)
                continue
            n = prev.failures + 1 if prev else 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (n - 1))
            self.backoff[o.address] = _Backoff(_key(by_addr[o.address]), n, self.clock() + delay, o.message)
            self.on_line(f"  {o.address}: FAILED {o.message} (retry in {delay:.0f} s)")
            self._event("retry_scheduled", f"retry in {delay:.0f} s (failure {n}): {o.message}",
                        o.address, delay_s=delay, failures=n)  # fmt: skip
        for d in result.diagnostics:
            if not any(d.startswith(f"{a}:") for a in failed):
                self.on_line(f"  {d}")
        return applied, failed

    def _sync_gateway(self) -> list[str]:
        try:
            info = self.engine.sync_gateway()
        except ZsconfError as exc:
            self._event("failed", f"gateway: {exc}", "platform/gateway")
            return [f"gateway: {exc}"]
        if info is not None and (info.started or info.changed):
            what = "started" if info.started else "config updated"
            return [f"gateway {what}: {info.url} (pid {info.pid})"]
        return []

    def _statuses(
        self,
        plan: Plan | None,
        orphans: set[str],
        plan_error: str | None,
        applying: frozenset[str] = frozenset(),
    ) -> int:
        observed = self.engine.refresh()
        failures = {a: b.why() for a, b in self.backoff.items()}
        statuses = compute_statuses(plan, self.store, observed, orphans, failures, plan_error, applying)
        transitions = record_statuses(self.store, statuses)
        for t in transitions:
            a = t.after
            self.on_line(f"{a.address}: {a.sync}/{a.health}" + (f" ({a.reason})" if a.reason else ""))
        return len(transitions)

    def _deliver(self) -> None:
        if self.notifier is None:
            return
        try:
            deliver_events(self.store, self.notifier, specs=self.engine.desired_specs())
        except Exception:  # a notification never blocks or breaks reconciliation
            log.exception("delivering notifications failed")

    # -- reporting ---------------------------------------------------------------------------
    def _report_plan_error(self, plan_error: str | None) -> None:
        if plan_error == self._plan_error:
            return
        if plan_error is not None:
            self.on_line(f"the stack does not plan; what runs keeps running:\n{plan_error}")
            self._event("plan_error", plan_error)
        else:
            self.on_line("the stack plans again")
            self._event("plan_recovered", "the stack loads and plans again")
        self._plan_error = plan_error

    def _report_orphans(self, orphans: set[str]) -> None:
        for addr in sorted(orphans - self._orphans):
            msg = f"{addr} is no longer in the stack files; kept (orphan): run with --prune to delete it"
            self.on_line(msg)
            self._event("orphan", msg, addr)
        self._orphans = set(orphans)

    def _event(self, event: str, message: str, address: str | None = None, **data: Any) -> None:
        try:
            self.store.add_event(event, message, address, **data)
        except Exception:  # the store is down: the log line is all we can do
            log.warning("could not record event %s: %s", event, message)


def _key(ch: Change) -> str:
    body = json.dumps([ch.action.value, ch.content_hash, ch.after], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _topo(changes: dict[str, Change]) -> list[str]:
    """Addresses with each one's dependencies (within `changes`) first."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(a: str, stack: set[str]) -> None:
        if a in seen or a in stack:
            return
        stack.add(a)
        for d in changes[a].dependencies:
            if d in changes:
                visit(d, stack)
        stack.discard(a)
        seen.add(a)
        out.append(a)

    for a in sorted(changes):
        visit(a, set())
    return out
