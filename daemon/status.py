"""The two status axes of every resource: sync (files vs state) and health (the live thing).

Called by the daemon's reconcile pass (`compute_statuses` then `record_statuses`, once per pass),
by the admin API (`read_statuses`) and by `zsconf status` when no daemon runs (computed now, not
recorded). Pure logic over the plan, the state store and the refresh's `Observed`; the only write
is `record_statuses`, one transaction per pass.

Sync: Synced (the plan has nothing to do for it) | OutOfSync (the plan would create, change,
replace or delete it, or it is an orphan: in the state but no longer in the files) | Unknown (no
plan: the stack does not load). Health: Healthy | Progressing | Degraded | Suspended | Missing,
by kind (see `_health`). `since` is the time of the last change of either axis.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.names import ACTIVE_RUN, JOB_KINDS

if TYPE_CHECKING:
    from zsconf.engine.refresh import Observed
    from zsconf.plans import Plan
    from zsconf.state import Store

__all__ = [
    "HEALTH",
    "SYNC",
    "ResourceStatus",
    "Transition",
    "compute_statuses",
    "read_statuses",
    "record_statuses",
]

SYNC = ("Synced", "OutOfSync", "Unknown")
HEALTH = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing")


@dataclass(frozen=True)
class ResourceStatus:
    address: str
    sync: str
    health: str
    reason: str
    since: float  # epoch seconds of the last transition of either axis

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Transition:
    """A change of sync or health recorded by `record_statuses` (`before` None: first seen)."""

    address: str
    before: ResourceStatus | None
    after: ResourceStatus


# -- compute ----------------------------------------------------------------------------------
def compute_statuses(
    plan: Plan | None,
    store: Store,
    observed: Observed | None,
    orphans: set[str],
    failures: dict[str, str],
    plan_error: str | None = None,
    applying: frozenset[str] = frozenset(),
) -> dict[str, ResourceStatus]:
    """Status of every address the plan or the state knows (with no plan: the state's and the
    ones recorded before). `failures`: address -> message of its last failed apply action;
    `orphans`: addresses in the state that the files no longer declare; `applying`: addresses
    the daemon is about to apply (Progressing until the pass after). `since` is carried over
    from the recorded status when neither axis changed, else now."""
    now = time.time()
    rows = store.resources()
    recorded = read_statuses(store)
    changes = {c.address: c for c in plan.changes} if plan is not None else {}
    addresses = set(rows) | set(changes) | set(orphans)
    if plan is None:
        addresses |= set(recorded)
    runs = _runs_by_address(store)
    versions = _newest_versions(store)
    broken = observed.broken if observed is not None else {}
    out: dict[str, ResourceStatus] = {}
    for addr in sorted(addresses):
        sync, sync_reason = _sync(addr, plan, changes, orphans, plan_error)
        ch = changes.get(addr)
        desired = ch.after if ch is not None and ch.after else None
        health, health_reason = _health(
            addr, rows.get(addr), runs.get(addr, []), versions, broken, store, desired
        )
        if addr in applying:
            health, health_reason = "Progressing", f"applying: {health_reason or health}"
        elif addr in failures:
            health, health_reason = "Degraded", f"last apply failed: {failures[addr]}"
        reason = "; ".join(r for r in (sync_reason, health_reason) if r)
        prev = recorded.get(addr)
        since = prev.since if prev and (prev.sync, prev.health) == (sync, health) else now
        out[addr] = ResourceStatus(addr, sync, health, reason, since)
    return out


def _sync(
    addr: str, plan: Plan | None, changes: dict[str, Any], orphans: set[str], plan_error: str | None
) -> tuple[str, str]:
    if plan is None:
        if not plan_error:
            return "Unknown", "no plan yet"
        lines = [x for x in plan_error.splitlines() if x.strip()] or [plan_error]
        more = f" (+{len(lines) - 1} more: zsconf validate)" if len(lines) > 1 else ""
        return "Unknown", f"the stack does not load: {lines[0].strip()}{more}"
    if plan.errors and addr not in changes:
        return "Unknown", "the plan has errors: " + "; ".join(plan.errors)[:300]
    if addr in orphans:
        return "OutOfSync", "orphan: in the state but no longer in the stack files (--prune deletes it)"
    ch = changes.get(addr)
    if ch is None:
        # In the state, not in the plan: a targeted plan, or a stack with errors.
        return "Unknown", "not in the current plan"
    if ch.action.value == " ":
        return "Synced", ""
    why = "; ".join(ch.reasons) or ", ".join(f.path for f in ch.fields)
    return "OutOfSync", f"{ch.action.conditional}{': ' + why if why else ''}"


def _health(
    addr: str,
    row: Any,
    runs: list[Any],
    versions: dict[tuple[str, str], Any],
    broken: dict[str, str],
    store: Store,
    desired: dict[str, Any] | None = None,
) -> tuple[str, str]:
    if row is None:
        return "Missing", "not created yet"
    kind = row.kind
    if row.status == "pending":
        return "Progressing", "apply in progress (intent recorded, not confirmed yet)"
    if row.status == "deleting":
        return "Progressing", "being deleted"
    if kind in JOB_KINDS:
        return _job_health(row, runs, store)
    if kind == "deployment":
        return _deployment_health(addr, row, runs, broken, desired)
    if kind == "model":
        mv = versions.get((row.tenant or "", row.name))
        if mv is None:
            return "Missing", "no version registered"
        if mv.path and not Path(mv.path).exists():
            return "Missing", f"folder of v{mv.version} is missing: {mv.path}"
        return "Healthy", f"v{mv.version}" + (f" at {mv.path}" if mv.path else " (catalog model)")
    if addr in broken:
        return "Degraded", broken[addr]
    return "Healthy", ""


def _job_health(row: Any, runs: list[Any], store: Store) -> tuple[str, str]:
    mine = [r for r in runs if r.content_hash == row.content_hash] or runs
    run = mine[-1] if mine else None
    status = run.status if run is not None else row.status
    rid = f"run {run.run_id}" if run is not None else "job"
    if status in ("intent", "submitted"):
        return "Progressing", f"{rid} starting"
    if status == "queued":
        return "Progressing", f"{rid} " + (_queued_why(store, run) if run is not None else "queued")
    if status == "running":
        return "Progressing", f"{rid} running" + _progress(run.workdir if run else "")
    if status == "succeeded":
        result = (row.outputs or {}).get("result") or {}
        gate = result.get("gate") if isinstance(result, dict) else None
        if isinstance(gate, dict) and gate.get("passed") is False:
            from zsconf.engine.gates import gate_summary

            # The run worked but its output may not be used: @latest skips the version.
            return "Degraded", f"{rid} succeeded; quality gate failed: {gate_summary(result)}"
        return "Healthy", f"{rid} succeeded"
    if status == "failed":
        return "Degraded", f"{rid} failed: {(run.error if run else None) or 'no error recorded'}"
    if status in ("cancelled", "stopped"):
        why = run.error if run is not None and run.error else status
        return "Suspended", f"{rid} {why}"
    return "Progressing", f"{rid} {status}"


def _queued_why(store: Store, run: Any) -> str:
    """'queued behind X, Y' from the run's `submitted` event (apply writes who it waits for)."""
    from sqlmodel import col, select

    from zsconf.state import Event

    with store.session() as s:
        q = select(Event).where(Event.address == run.address, Event.event == "submitted")
        ev = s.exec(q.order_by(col(Event.id).desc()).limit(1)).first()
    if ev is not None and run.run_id in ev.message and "queued behind" in ev.message:
        return "queued behind " + ev.message.split("queued behind", 1)[1].strip(" )")
    return "queued"


def _progress(workdir: str) -> str:
    """': step 12, loss 1.234' from the last line of the run's metrics.jsonl (read from the end:
    a long run's file is large)."""
    if not workdir:
        return ""
    try:
        with open(Path(workdir) / "metrics.jsonl", "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
        last = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return ""
    if not isinstance(last, dict):
        return ""
    if "step" in last:
        text = f": step {last['step']}"
        if isinstance(last.get("loss"), int | float):
            text += f", loss {last['loss']:.4g}"
        return text
    if "samples_done" in last:
        return f": {last['samples_done']}/{last.get('samples_total', '?')} samples"
    if "stage" in last:
        return f": stage {last['stage']}"
    return ""


def _deployment_health(
    addr: str, row: Any, runs: list[Any], broken: dict[str, str], desired: dict[str, Any] | None
) -> tuple[str, str]:
    """Counted from what the gateway routes to (the recorded instances), the one truth routing
    and status share; the instance count wanted is the files' (a scale in progress shows it)."""
    from zsconf.engine.refresh import routed_ids

    if row.status == "stopped" or (row.spec or {}).get("state") == "stopped":
        return "Suspended", "state: stopped"
    if addr in broken:
        return "Degraded", broken[addr]
    host = (row.outputs or {}).get("adapter_on")
    if host:  # served by the host's instances: healthy as they are
        if host in broken:
            return "Degraded", f"adapter on {host}: {broken[host]}"
        return "Healthy", f"adapter on {host}"
    want = int((desired or row.spec or {}).get("instances", 1) or 0)
    routed = set(routed_ids(row))
    serving = [r for r in runs if r.status == "running" and r.run_id in routed]
    starting = [r for r in runs if r.status in ACTIVE_RUN and r.run_id not in routed]
    more = f", {len(starting)} starting" if starting else ""
    if not serving:
        return "Progressing", f"no instance running yet (0 of {want}){more}"
    text = f"{len(serving)} of {want} instances running{more}"
    return ("Progressing" if len(serving) != want or starting else "Healthy"), text


def _runs_by_address(store: Store) -> dict[str, list[Any]]:
    """Per address, oldest first: every unfinished run (a deployment's instances) plus the newest
    run. Bounded by what is live, not by the run history; Core rows (the ORM costs ~10x more)."""
    from sqlalchemy import func, or_, select

    from zsconf.state import RunRow

    t = RunRow.__table__  # type: ignore[attr-defined]
    newest = select(func.max(t.c.id)).group_by(t.c.address)
    q = select(t).where(or_(t.c.id.in_(newest), t.c.status.in_(sorted(ACTIVE_RUN)))).order_by(t.c.id)
    out: dict[str, list[Any]] = {}
    with store.engine.connect() as conn:
        for run in conn.execute(q):
            out.setdefault(run.address, []).append(run)
    return out


def _newest_versions(store: Store) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for mv in store.model_versions():
        key = (mv.tenant, mv.model)
        if key not in out or mv.version >= out[key].version:
            out[key] = mv
    return out


# -- record / read ----------------------------------------------------------------------------
def record_statuses(
    store: Store, statuses: dict[str, ResourceStatus], prune: bool = True
) -> list[Transition]:
    """Upsert the status rows in one transaction and add one `status` event per transition (sync
    or health changed; a reason-only change updates the row quietly and keeps `since`). With
    `prune`, rows of addresses not in `statuses` (resources gone from files and state) are
    deleted. Does not bump the state serial: statuses are not something a plan depends on.
    Written with Core statements: a pass over thousands of unchanged resources writes nothing."""
    from sqlalchemy import bindparam

    from zsconf.state import Event, StatusRow

    table = StatusRow.__table__  # type: ignore[attr-defined]
    now = time.time()
    transitions: list[Transition] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    with store.engine.begin() as conn:
        existing = {r.address: _from_row(r) for r in conn.execute(table.select())}
        for addr, st in statuses.items():
            before = existing.get(addr)
            changed = before is None or (before.sync, before.health) != (st.sync, st.health)
            if not changed and before is not None and before.reason == st.reason:
                continue  # nothing to write
            since = now if changed or before is None else before.since
            row = {"address": addr, "sync": st.sync, "health": st.health, "reason": st.reason,
                   "since": since, "updated_at": now}  # fmt: skip
            if before is None:
                inserts.append(row)
            else:
                updates.append({f"b_{k}": v for k, v in row.items()})
            if changed:
                transitions.append(
                    Transition(addr, before, ResourceStatus(addr, st.sync, st.health, st.reason, since))
                )
                frm = {"sync": before.sync, "health": before.health} if before else None
                msg = f"{st.sync}/{st.health}" + (f": {st.reason}" if st.reason else "")
                if before is not None:
                    msg = f"{before.sync}/{before.health} -> {msg}"
                events.append({"ts": now, "address": addr, "event": "status", "message": msg,
                               "data": {"sync": st.sync, "health": st.health, "reason": st.reason,
                                        "from": frm}})  # fmt: skip
        if inserts:
            conn.execute(table.insert(), inserts)
        if updates:
            # Bind names differ from the column names (SQLAlchemy reserves those for SET).
            conn.execute(
                table.update()
                .where(table.c.address == bindparam("b_address"))
                .values(
                    {c: bindparam(f"b_{c}") for c in ("sync", "health", "reason", "since", "updated_at")}
                ),
                updates,
            )
        if events:
            conn.execute(Event.__table__.insert(), events)  # type: ignore[attr-defined]
        gone = [a for a in existing if a not in statuses] if prune else []
        if gone:
            conn.execute(table.delete().where(table.c.address.in_(gone)))
    return transitions


def read_statuses(store: Store) -> dict[str, ResourceStatus]:
    """The statuses the daemon last recorded, by address."""
    from zsconf.state import StatusRow

    table = StatusRow.__table__  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        return {r.address: _from_row(r) for r in conn.execute(table.select().order_by(table.c.address))}


def _from_row(row: Any) -> ResourceStatus:
    return ResourceStatus(row.address, row.sync, row.health, row.reason, row.since)
