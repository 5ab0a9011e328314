"""Refresh: ask the executor and the file system what really exists, compared with the state.

Called by `zsconf.engine.plan` (read only) and `zsconf.engine.apply` (which also records runs
that finished since: model versions, statuses). Findings are `Drift` entries, shown in the plan's
"changed outside zsconf" section.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.engine.gateway import GATEWAY, gateway_url
from zsconf.names import JOB_KINDS
from zsconf.plans import Drift
from zsconf.state import RunRow, Store

if TYPE_CHECKING:
    from zsconf.executors import Executor

__all__ = ["Observed", "instance_alive", "observe_run", "read_result", "refresh", "routed_ids"]


@dataclass
class Observed:
    drift: list[Drift] = field(default_factory=list)
    # addresses whose recorded thing is gone and must be made again (dead server, missing files)
    broken: dict[str, str] = field(default_factory=dict)
    # job runs that ended (succeeded, failed, lost): ready to record
    finished: list[tuple[RunRow, Any]] = field(default_factory=list)


def read_result(workdir: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(workdir) / "result.json").read_text())
    except (OSError, ValueError):
        return None


def observe_run(executor: Executor, run: RunRow) -> Any:
    """The executor's Observation of a job run; re-adopts it from the recorded handle when the
    executor has lost track of it (another process's executor, a restart)."""
    obs = executor.observe(run.run_id)
    if obs.state == "lost" and run.handle.get("pid"):
        from zsconf.executors import ProcessHandle

        executor.adopt(run.run_id, ProcessHandle.from_dict(run.handle))
        obs = executor.observe(run.run_id)
    return obs


def run_handle(obs: Any, workdir: str | Path) -> dict[str, Any]:
    """What the runs table keeps of a started job run, for `observe_run` to adopt it again: the
    process, and on a cluster the node and the cluster's identities for it."""
    if not obs.pid:
        return {}
    handle = {"pid": obs.pid, "start_time": obs.start_time, "pgid": obs.pid,
              "host": obs.host or os.uname().nodename, "workdir": str(workdir)}  # fmt: skip
    if obs.placement:
        handle["placement"] = obs.placement
    return handle


def instance_alive(executor: Executor, run: RunRow) -> bool:
    if not run.handle.get("process"):
        return False
    from zsconf.executors import InstanceHandle

    return bool(executor.instance_alive(InstanceHandle.from_dict(run.handle)))


def routed_ids(row: Any) -> list[str]:
    """Run ids of the instances the gateway routes `row` (a deployment) to: its recorded outputs."""
    return [i.get("run_id") for i in (row.outputs or {}).get("instances") or []]


def _instances_drift(executor: Executor, row: Any, runs: list[RunRow]) -> str:
    """Why a running deployment's instances are not what the gateway routes to ('' when they
    are): a recorded instance died, or a crash between starting one and routing to it left the
    routing pointing elsewhere (the truth the gateway and the status both read is the routing)."""
    live = [r for r in runs if r.status == "running"]
    dead = [r for r in live if not instance_alive(executor, r)]
    if dead:
        return f"{len(dead)} of {len(live)} instances not running ({', '.join(r.run_id for r in dead)})"
    routed = set(routed_ids(row))
    running = {r.run_id for r in live}
    lost = sorted(routed - running)
    unrouted = sorted(running - routed)
    if lost:
        return f"routes to instances that no longer run ({', '.join(lost)})"
    if unrouted:
        return f"instances run that the gateway does not route to ({', '.join(unrouted)})"
    return ""


def refresh(store: Store, rows: dict[str, Any] | None = None, executor: Executor | None = None) -> Observed:
    """`rows`: the resource rows when the caller has read them already. Without an executor only
    the files are checked (processes are not observed)."""
    obs = Observed()
    rows = store.resources() if rows is None else rows
    # Model folders: a missing folder is drift of whatever made that version (import or job).
    # Only each owner's newest version counts: older ones are history a replace left behind.
    newest: dict[str | None, Any] = {}
    for mv in store.model_versions():
        if mv.source_address not in newest or mv.version >= newest[mv.source_address].version:
            newest[mv.source_address] = mv
    for owner, mv in newest.items():
        if owner in rows and mv.path and not Path(mv.path).exists():
            msg = f"model folder of {mv.tenant}/{mv.model} v{mv.version} is missing: {mv.path}"
            obs.drift.append(Drift(owner, msg))
            obs.broken[owner] = msg
    if executor is None:
        return obs
    if any(r.kind == "service_group" for r in rows.values()) and gateway_url(executor) is None:
        obs.drift.append(Drift(GATEWAY, "the gateway is not running; apply starts it", apply_fixes=True))
    watched = {
        a
        for a, r in rows.items()
        if r.status == "running" and (r.kind == "deployment" or r.kind in JOB_KINDS)
    }
    if not watched:
        return obs
    runs_by_addr: dict[str, list[RunRow]] = {}
    for run in store.active_runs():
        runs_by_addr.setdefault(run.address, []).append(run)
    jobs: list[RunRow] = []
    for addr in sorted(watched):
        row = rows[addr]
        if row.kind == "deployment":
            msg = _instances_drift(executor, row, runs_by_addr.get(addr, []))
            if msg:
                obs.drift.append(Drift(addr, msg))
                obs.broken[addr] = msg
            continue
        jobs.extend(
            r
            for r in runs_by_addr.get(addr, [])
            if r.content_hash == row.content_hash and r.status != "intent"
        )
    # One scheduling pass for all of them when the executor offers it (LocalExecutor does).
    many = getattr(executor, "observe_many", None)
    seen = many([r.run_id for r in jobs]) if many and jobs else {}
    for r in jobs:
        o = seen.get(r.run_id)
        if o is None or (o.state == "lost" and r.handle.get("pid")):
            o = observe_run(executor, r)
        if o.finished:
            obs.finished.append((r, o))
    return obs
