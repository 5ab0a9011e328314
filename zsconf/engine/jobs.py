"""Job control: stop, resume, auto-stop and auto-restart of fine-tune / compression / evaluation jobs.

Called by `zsconf job stop|resume|checkpoints` (zsconf/cli/job_cmds.py), by the engine's
`finish_runs` and by the daemon every pass (`supervise_jobs`). Works from the state store and the
executor alone (no loaded stack): a new attempt is rebuilt from the resource row's spec and the
previous attempt's `spec.json` envelope, with a new run id, `"resume": true` and the SAME workdir,
so the runner continues from the latest checkpoint in `workdir/checkpoints/`.

Bookkeeping kept in the runs table: each attempt's `checkpoints` column holds the latest
checkpoint that existed when it started (empty for the first), so "did this failed attempt make
progress" is a comparison; `restarted` events carry the run id they started, so restarts made by
the supervisor are told apart from starts by the user (a user resume starts a fresh budget).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.common import parse_duration
from zsconf.engine.refresh import run_handle
from zsconf.errors import StateError, ZsconfError
from zsconf.executors.supervise import enforce_auto_stop, latest_checkpoint, should_restart
from zsconf.names import ACTIVE_RUN, JOB_KINDS
from zsconf.privfile import write_private
from zsconf.state import ResourceRow, RunRow, Store

if TYPE_CHECKING:
    from zsconf.executors import Executor

__all__ = ["CheckpointInfo", "list_checkpoints", "resume_job", "stop_job", "supervise_jobs"]

log = logging.getLogger("zsconf.engine.jobs")

_STOP_GRACE_S = 30.0  # a training run finishes its step and checkpoints it before SIGKILL
# An intent row older than this whose starter is gone is submitted by the supervisor (apply and
# resume go from intent to submit in well under a second).
INTENT_GRACE_S = 30.0
# A running attempt whose run directory has not changed for this long is reported as a suspected
# hang (event `hang`, once per attempt; the manual's "suspected hang" notification). Runners write a
# metrics line per step or batch, so silence this long means a stuck collective or device, not slow
# work. ZSCONF_HANG_AFTER (a duration, e.g. 45m) overrides it for the whole host.
HANG_AFTER_DEFAULT = "30m"
_PROGRESS_FILES = ("metrics.jsonl", "runner.log", "events.jsonl")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder of a job's current workdir (`step` None when the name has no number)."""

    step: int | None
    path: str
    created: float  # epoch seconds (folder mtime)
    size_bytes: int
    loss: float | None = None  # training loss at that step (trainer_state.json), when recorded
    validation_loss: float | None = None


# -- lookups ------------------------------------------------------------------------------------
def _job_row(store: Store, address: str) -> ResourceRow:
    row = store.resource(address)
    if row is None:
        raise StateError(f"{address} is not in the state (apply the stack first)")
    if row.kind not in JOB_KINDS:
        raise StateError(f"{address} is a {row.kind}, not a job ({', '.join(JOB_KINDS)})")
    return row


def _current_runs(store: Store, row: ResourceRow) -> list[RunRow]:
    """Attempts of the resource's current content (older contents are history)."""
    return [r for r in store.runs(row.address) if r.content_hash == row.content_hash]


def _options(row: ResourceRow) -> dict[str, Any]:
    return dict((row.spec or {}).get("options") or {})


def _auto_stop_s(row: ResourceRow) -> float | None:
    value = _options(row).get("auto_stop")
    return float(parse_duration(value)) if value not in (None, "", 0) else None


def _duration_text(seconds: float) -> str:
    """3600 -> '1h', 5400 -> '1h30m', 90 -> '1m30s' (the spec's own notation)."""
    s, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


def _policy(row: ResourceRow) -> dict[str, Any]:
    policy = {"enabled": True, "max_restarts": 3, "unconditional": False}
    policy.update(_options(row).get("auto_restart") or {})
    return policy


def _start_checkpoint(run: RunRow) -> str | None:
    return run.checkpoints[0] if run.checkpoints else None


def _now_dt() -> datetime:
    return datetime.now(UTC)


def _interrupted_start(runs: list[RunRow]) -> bool:
    """The last attempt is an intent row of a restart or resume (same workdir as the attempt
    before it; apply gives each of its runs a new workdir) that was never submitted."""
    return len(runs) > 1 and runs[-1].status == "intent" and runs[-1].workdir == runs[-2].workdir


def _age_s(run: RunRow, now: float | None) -> float:
    created = run.created_at if run.created_at.tzinfo else run.created_at.replace(tzinfo=UTC)
    return (time.time() if now is None else now) - created.timestamp()


def _restart_run_ids(store: Store, address: str) -> set[str]:
    return {str(ev.data.get("run_id")) for ev in store.events(address=address, limit=100_000)
            if ev.event == "restarted"}  # fmt: skip


def _restart_counts(store: Store, runs: list[RunRow]) -> tuple[int, int]:
    """(restarts made since the last start by apply or the user, consecutive failures ending
    with the last run). A failed attempt that wrote a new checkpoint made progress: the streak
    starts again with it."""
    if not runs:
        return 0, 0
    restarted = _restart_run_ids(store, runs[0].address)
    restarts = 0
    for r in reversed(runs):
        if r.run_id not in restarted:
            break
        restarts += 1
    consecutive = 0
    for i in range(len(runs) - 1, -1, -1):
        r = runs[i]
        if r.status != "failed":
            break
        consecutive += 1
        at_end = _start_checkpoint(runs[i + 1]) if i + 1 < len(runs) else _latest(r.workdir)
        if at_end != _start_checkpoint(r) or r.run_id not in restarted:
            break  # progress made, or this attempt was started by apply / the user
    return restarts, consecutive


def _ran_before_last_s(store: Store, runs: list[RunRow]) -> float:
    """Seconds that the attempts before the last one ran since apply or the user last started the
    job: auto_stop bounds the job's running time, and an auto-restart continues the same job (a
    user's resume starts a new budget)."""
    if len(runs) < 2:
        return 0.0  # the common case: no event query on every pass
    restarted = _restart_run_ids(store, runs[0].address)
    total, i = 0.0, len(runs) - 1
    while i > 0 and runs[i].run_id in restarted:
        total += _duration_s(runs[i - 1])
        i -= 1
    return total


def _duration_s(run: RunRow) -> float:
    if run.started_at is None or run.finished_at is None:
        return 0.0
    return max(0.0, (run.finished_at - run.started_at).total_seconds())


def _latest(workdir: str) -> str | None:
    ck = latest_checkpoint(workdir) if workdir else None
    return str(ck) if ck else None


# -- starting an attempt ------------------------------------------------------------------------
def _request(store: Store, row: ResourceRow, run_id: str, spec_path: Path, workdir: Path) -> Any:
    """The JobRequest of a new attempt, from the resource row alone, by apply's rule."""
    from zsconf.catalog import load_catalog
    from zsconf.engine.runs import job_request

    tenant_row = store.resource(f"tenant/{row.tenant}") if row.tenant else None
    max_cards = ((tenant_row.spec or {}).get("quotas") or {}).get("max_cards") if tenant_row else None
    resources = (row.spec or {}).get("resources") or {}
    return job_request(load_catalog(), run_id, row.address, row.tenant or "", resources, spec_path,
                       workdir, max_cards)  # fmt: skip


def _start_attempt(
    store: Store, executor: Executor, row: ResourceRow, prev: RunRow, announce: Callable[[RunRow], None]
) -> RunRow:
    """Start the next attempt of `row` in `prev`'s workdir with `resume: true`; returns its row.

    The intent row and `announce(run)` (the event saying why) are written before anything starts,
    so a crash in between leaves an intent that `supervise_jobs` submits later, and the restart
    budget counts it."""
    all_runs = store.runs(row.address)
    attempt = max((r.attempt for r in all_runs), default=0) + 1
    from zsconf.engine.runs import new_run_id

    run_id = new_run_id(row.address, row.content_hash, f"a{len(all_runs) + 1}")
    workdir = Path(prev.workdir)
    if not (workdir / "spec.json").is_file():
        raise StateError(f"cannot resume {row.address}: {workdir / 'spec.json'} is missing")
    ckpt = _latest(str(workdir))
    run = store.add_run(RunRow(address=row.address, run_id=run_id, attempt=attempt,
                               content_hash=row.content_hash, workdir=str(workdir),
                               output_dir=prev.output_dir, checkpoints=[ckpt] if ckpt else []))  # fmt: skip
    # "running" from the intent on: the supervisor then finishes a start that was interrupted.
    store.update_resource(row.address, status="running")
    announce(run)
    return _submit(store, executor, row, run, prev.run_id)


def _submit(store: Store, executor: Executor, row: ResourceRow, run: RunRow, prev_run_id: str) -> RunRow:
    """Point the workdir's envelope at `run` (resume: true) and submit it. Idempotent: the
    executor answers a run id it already has with its status."""
    workdir = Path(run.workdir)
    spec_path = workdir / "spec.json"
    try:
        envelope = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot resume {row.address}: {spec_path} unreadable ({exc})") from exc
    envelope.update(run_id=run.run_id, resume=True)
    write_private(spec_path, json.dumps(envelope, indent=1))  # it may hold resolved secrets
    # The previous attempt's result.json must not be read as this attempt's: keep it aside.
    old = workdir / "result.json"
    if old.exists() and executor.observe(run.run_id).state == "lost":
        os.replace(old, workdir / f"result.{prev_run_id}.json")
    sub = executor.submit(_request(store, row, run.run_id, spec_path, workdir))
    obs = executor.observe(run.run_id)
    handle = run_handle(obs, workdir)
    status = "queued" if sub.state == "queued" and obs.state == "queued" else "running"
    run = store.update_run(run.run_id, status=status, pid=obs.pid, start_time=obs.start_time,
                           host=handle.get("host") or os.uname().nodename, handle=handle, started_at=_now_dt()) or run  # fmt: skip
    outputs = dict(row.outputs or {})
    outputs.update({"run_id": run.run_id, "workdir": str(workdir)})
    store.update_resource(row.address, status="running", outputs=outputs)
    return run


def _resume_from(run: RunRow) -> str:
    ck = _start_checkpoint(run)
    return f"from {Path(ck).name}" if ck else "from the start (no checkpoint yet)"


# -- public API ---------------------------------------------------------------------------------
def stop_job(store: Store, executor: Executor, address: str, reason: str = "stopped by user") -> RunRow:
    """Stop the running (or queued) attempt of a job; it is not restarted until `resume_job`.

    Raises StateError when the job has no active attempt. The resource's status becomes
    "stopped"; event `job_stopped`."""
    row = _job_row(store, address)
    runs = _current_runs(store, row)
    active = [r for r in runs if r.status in ACTIVE_RUN]
    if not active:
        last = runs[-1].status if runs else "never started"
        raise StateError(f"{address} has no running attempt to stop (last attempt: {last})")
    run = active[-1]
    obs = executor.cancel(run.run_id, grace_s=_STOP_GRACE_S, reason=reason)
    ck = _latest(run.workdir)
    stopped = store.update_run(run.run_id, status="cancelled", error=reason, exit_code=obs.exit_code,
                               finished_at=_now_dt()) or run  # fmt: skip
    store.update_resource(address, status="stopped")
    where = f"latest checkpoint {Path(ck).name}" if ck else "no checkpoint yet"
    store.add_event("job_stopped", f"run {run.run_id} stopped ({reason}); {where}", address,
                    run_id=run.run_id, checkpoint=ck, reason=reason)  # fmt: skip
    return stopped


def resume_job(store: Store, executor: Executor, address: str, reason: str = "resumed by user") -> RunRow:
    """Start a new attempt of a stopped or failed job from its latest checkpoint (same workdir,
    `resume: true`). Raises StateError when it is still running or already succeeded."""
    row = _job_row(store, address)
    runs = _current_runs(store, row)
    if not runs:
        raise StateError(f"{address} never ran with its current spec: run `zsconf apply`")
    last = runs[-1]
    if _interrupted_start(runs):
        return _submit(store, executor, row, last, runs[-2].run_id)
    if last.status in ACTIVE_RUN:
        raise StateError(f"{address} is already {last.status} (run {last.run_id}); nothing to resume")
    if last.status == "succeeded":
        raise StateError(f"{address} already succeeded (run {last.run_id}); nothing to resume")

    def announce(run: RunRow) -> None:
        store.add_event("job_resumed", f"run {run.run_id} started ({reason}), {_resume_from(run)}", address,
                        run_id=run.run_id, previous=last.run_id, checkpoint=_start_checkpoint(run))  # fmt: skip

    return _start_attempt(store, executor, row, last, announce)


def supervise_jobs(store: Store, executor: Executor, now: float | None = None) -> list[str]:
    """One supervision pass over every job resource: stop jobs running longer than the spec's
    `options.auto_stop` (restarts included), report a running attempt silent for HANG_AFTER as a
    suspected hang, restart failed ones as `options.auto_restart` allows (resuming from the
    latest checkpoint). Call after `finish_runs` (it acts on runs recorded as failed). Returns one
    line per action taken; a job that cannot be handled gets a line too and does not stop the
    others."""
    lines: list[str] = []
    for address, view in sorted(store.resources().items()):
        if view.kind not in JOB_KINDS or view.status in ("deleting", "stopped"):
            continue
        row = store.resource(address)
        if row is None:
            continue
        try:
            _supervise_one(store, executor, row, now, lines)
        except (ZsconfError, OSError) as exc:
            log.warning("supervising %s failed: %s", address, exc)
            lines.append(f"{address}: supervision failed: {exc}")
    return lines


def _supervise_one(
    store: Store, executor: Executor, row: ResourceRow, now: float | None, lines: list[str]
) -> None:
    address = row.address
    runs = _current_runs(store, row)
    if not runs:
        return
    last = runs[-1]
    limit = _auto_stop_s(row)
    reason = f"auto_stop: ran longer than {_duration_text(limit or 0)}"
    if last.status in ("submitted", "queued", "running"):
        # what is left of the job's budget after the attempts this one continues
        left = max(limit - _ran_before_last_s(store, runs), 0.001) if limit else None
        if left and enforce_auto_stop(executor, last.run_id, left, grace_s=_STOP_GRACE_S, now=now):
            store.update_run(last.run_id, status="cancelled", error=reason, finished_at=_now_dt())
            store.update_resource(address, status="stopped")
            store.add_event("auto_stopped", f"run {last.run_id} stopped: {reason}", address,
                            run_id=last.run_id, checkpoint=_latest(last.workdir))  # fmt: skip
            lines.append(f"{address}: {reason}")
        else:
            _report_hang(store, executor, row, last, now, lines)
    elif last.status == "failed":
        policy = _policy(row)
        restarts, consecutive = _restart_counts(store, runs)
        if not should_restart(last.exit_code, restarts, consecutive, policy):
            return
        if limit and _ran_before_last_s(store, runs) + _duration_s(last) >= limit:
            # a restart would only be stopped again: the job has used its running time
            store.update_resource(address, status="stopped")
            store.add_event("auto_stopped", f"run {last.run_id} failed and is not restarted: {reason}",
                            address, run_id=last.run_id, checkpoint=_latest(last.workdir))  # fmt: skip
            lines.append(f"{address}: {reason}; not restarted")
            return
        why = f"exit code {last.exit_code}" if last.exit_code is not None else "process lost"
        n, limit = restarts + 1, int(policy["max_restarts"])

        def announce(run: RunRow) -> None:
            msg = f"run {last.run_id} failed ({why}); restart {n} of {limit} as run {run.run_id}, {_resume_from(run)}"
            store.add_event("restarted", msg, address, run_id=run.run_id, previous=last.run_id, restart=n,
                            max_restarts=limit, exit_code=last.exit_code, checkpoint=_start_checkpoint(run))  # fmt: skip
            lines.append(f"{address}: {msg}")

        _start_attempt(store, executor, row, last, announce)
    elif _interrupted_start(runs) and _age_s(last, now) > INTENT_GRACE_S:
        # A restart or resume whose starter died between its intent row and the submit.
        _submit(store, executor, row, last, runs[-2].run_id)
        lines.append(f"{address}: submitted run {last.run_id} (its start was interrupted)")


def _hang_after_s() -> float:
    return float(parse_duration(os.environ.get("ZSCONF_HANG_AFTER") or HANG_AFTER_DEFAULT))


def _report_hang(
    store: Store, executor: Executor, row: ResourceRow, run: RunRow, now: float | None, lines: list[str]
) -> None:
    """Event `hang` once for an attempt that is running but has written nothing for a while."""
    obs = executor.observe(run.run_id)
    if obs.state != "running" or obs.started_at is None:
        return  # queued time is not silence
    progress = obs.started_at
    for name in _PROGRESS_FILES:
        try:
            progress = max(progress, (Path(run.workdir) / name).stat().st_mtime)
        except OSError:
            continue
    silent = (time.time() if now is None else now) - progress
    if silent < _hang_after_s():
        return
    if any(e.event == "hang" and e.data.get("run_id") == run.run_id
           for e in store.events(address=row.address, limit=100_000)):  # fmt: skip
        return
    msg = (f"run {run.run_id}: no progress for {_duration_text(silent)} (no metrics, log or event "
           "written); suspected hang. `zsconf logs` shows its last lines; `zsconf job stop` ends it")  # fmt: skip
    store.add_event("hang", msg, row.address, run_id=run.run_id, silent_s=round(silent))
    lines.append(f"{row.address}: {msg}")


def list_checkpoints(store: Store, address: str) -> list[CheckpointInfo]:
    """Checkpoints of the job's current workdir, oldest first (the last is what a resume uses)."""
    row = _job_row(store, address)
    runs = _current_runs(store, row)
    if not runs:
        return []
    root = Path(runs[-1].workdir) / "checkpoints"
    latest = latest_checkpoint(runs[-1].workdir)
    if latest is None:
        return []
    out: list[CheckpointInfo] = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        m = re.search(r"(\d+)$", d.name)
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        try:
            state = json.loads((d / "trainer_state.json").read_text())
        except (OSError, ValueError):
            state = {}  # another runner's layout: losses unknown
        out.append(CheckpointInfo(step=int(m.group(1)) if m else None, path=str(d),
                                  created=d.stat().st_mtime, size_bytes=size,
                                  loss=state.get("last_loss"),
                                  validation_loss=state.get("validation_loss")))  # fmt: skip
    # Same order as latest_checkpoint's rule (step, then time): the last one is the latest.
    out.sort(key=lambda c: (c.step if c.step is not None else -1, c.created))
    return out
