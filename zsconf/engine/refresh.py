"""Refresh: ask the processes and the file system what really exists, compared with the state.

Called by `zsconf.engine.plan` (read only) and `zsconf.engine.apply` (which also records runs
that finished since: model versions, statuses). Findings are `Drift` entries, shown in the plan's
"changed outside zsconf" section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsconf.engine.launcher import ProcessRef, is_alive
from zsconf.plans import Drift
from zsconf.state import RunRow, Store

__all__ = ["Observed", "read_result", "refresh"]

JOB_KINDS = ("finetune", "compression", "evaluation")


@dataclass
class Observed:
    drift: list[Drift] = field(default_factory=list)
    # addresses whose recorded thing is gone and must be made again (dead server, missing files)
    broken: dict[str, str] = field(default_factory=dict)
    # job runs whose process is gone and that wrote result.json: ready to record
    finished: list[RunRow] = field(default_factory=list)


def read_result(workdir: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(workdir) / "result.json").read_text())
    except (OSError, ValueError):
        return None


def refresh(store: Store, rows: dict[str, Any] | None = None) -> Observed:
    """`rows`: the resource rows when the caller has read them already."""
    obs = Observed()
    rows = store.resources() if rows is None else rows
    runs_by_addr: dict[str, list[RunRow]] = {}
    for run in store.runs():
        runs_by_addr.setdefault(run.address, []).append(run)
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
    for addr, row in rows.items():
        if row.kind == "deployment" and row.status == "running":
            live = [r for r in runs_by_addr.get(addr, []) if r.status in ("running", "submitted")]
            dead = [r for r in live if r.pid is None or not is_alive(ProcessRef(r.pid, r.start_time or 0))]
            if dead:
                msg = (
                    f"{len(dead)} of {len(live)} instances not running ({', '.join(r.run_id for r in dead)})"
                )
                obs.drift.append(Drift(addr, msg))
                obs.broken[addr] = msg
        elif row.kind in JOB_KINDS and row.status == "running":
            for r in runs_by_addr.get(addr, []):
                if r.status not in ("running", "submitted") or r.content_hash != row.content_hash:
                    continue
                if r.pid is not None and is_alive(ProcessRef(r.pid, r.start_time or 0)):
                    continue
                if read_result(r.workdir) is not None:
                    obs.finished.append(r)
                else:
                    msg = f"run {r.run_id} (pid {r.pid}) is gone without a result"
                    obs.drift.append(Drift(addr, msg))
                    obs.broken[addr] = msg
    return obs
