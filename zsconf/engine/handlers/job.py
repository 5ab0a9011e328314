"""Handler of jobs (fine-tunes, compressions, evaluations): intent, submit or adopt the attempt,
and follow it to the end when this apply needs its output (`wait_run`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from zsconf.engine import launcher
from zsconf.engine.context import (
    ApplyContext,
    crash_point,
    desired_spec,
    new_row,
    record,
    resolve_model,
    resolved_spec,
    split_address,
)
from zsconf.engine.jobs import supervise_jobs
from zsconf.engine.refresh import read_result, run_handle
from zsconf.engine.runs import FINISH_LOCK, finish_runs, job_request, new_run_id, next_version
from zsconf.errors import ExecutorError, PermanentError
from zsconf.names import ACTIVE_RUN
from zsconf.plans import Action, Change
from zsconf.privfile import write_private
from zsconf.state import RunRow

__all__ = ["apply_job", "wait_run"]


SUPERVISE_EVERY_S = 5.0  # apply --wait: how often auto_stop is checked while a job runs


def apply_job(ctx: ApplyContext, ch: Change) -> str:
    kind, tenant, name = split_address(ch.address)
    assert tenant is not None
    ex = ctx.executor
    if ch.action is Action.DELETE:
        for r in ctx.store.runs(ch.address):
            if r.status in ACTIVE_RUN:
                ex.cancel(r.run_id, grace_s=5.0, reason="destroyed")
                ctx.store.update_run(r.run_id, status="cancelled")
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    if ch.action is Action.UPDATE:
        record(ctx, ch, status=(ctx.store.resource(ch.address) or new_row(ch, "applied")).status)
        return "updated in place"
    spec = desired_spec(ctx, ch.address)
    # Adopt an unfinished run of this content (a re-run after a crash); otherwise a new attempt.
    # The run id is fixed before any side effect, so a crash after this point is resumable.
    runs = ctx.store.runs(ch.address)
    active = [r for r in runs if r.content_hash == ch.content_hash and r.status in ACTIVE_RUN]
    run = active[-1] if active else None
    run_id = run.run_id if run else new_run_id(ch.address, ch.content_hash, f"a{len(runs) + 1}")
    workdir = ctx.artifacts / "runs" / tenant / kind / name / run_id
    out_dir: Path | None = None
    if kind != "evaluation":
        version = next_version(ctx.store, tenant, spec.output.model)
        out_dir = ctx.artifacts / "models" / tenant / spec.output.model / f"v{version}"
    if run is None:
        # Intent first: a crash after this line is resumed by adopting or starting this run id.
        run = ctx.store.add_run(RunRow(address=ch.address, run_id=run_id, content_hash=ch.content_hash,
                                       attempt=len(runs) + 1, workdir=str(workdir),
                                       output_dir=str(out_dir) if out_dir else None))  # fmt: skip
        crash_point("after_intent")
    elif run.output_dir:
        out_dir = Path(run.output_dir)
    prev = ctx.store.resource(ch.address)
    obs = ex.observe(run_id)
    if obs.state == "lost":
        ref = launcher.find_run(run_id)  # started before a crash, never recorded by the executor
        if ref is not None:
            from zsconf.executors import ProcessHandle

            ex.adopt(run_id, ProcessHandle(pid=ref.pid, start_time=ref.start_time, pgid=ref.pid,
                                           host=os.uname().nodename, workdir=str(workdir)))  # fmt: skip
            obs = ex.observe(run_id)
    if obs.state == "lost" and read_result(str(workdir)) is None:
        inputs = _job_inputs(ctx, spec, tenant, kind)
        envelope = {"run_id": run_id, "address": ch.address, "workdir": str(workdir),
                    "output_dir": str(out_dir) if out_dir else None,
                    "device": ctx.loaded.stack.platform.device, "spec": resolved_spec(ctx, ch), "inputs": inputs,
                    "resume": (workdir / "checkpoints").exists()}  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        write_private(spec_path, json.dumps(envelope, indent=1))
        quotas = ctx.loaded.stack.tenants[tenant].quotas
        sub = ex.submit(job_request(ctx.catalog, run_id, ch.address, tenant, spec.resources.model_dump(),
                                    spec_path, workdir, quotas.max_cards))  # fmt: skip
        crash_point("after_start")
        where = f"pid {sub.handle.pid}" if sub.handle else f"queued behind {', '.join(sub.waiting_behind)}"
        ctx.store.add_event("submitted", f"run {run_id} submitted ({where})", ch.address)
        obs = ex.observe(run_id)
    handle = run_handle(obs, workdir)
    status = "queued" if obs.state == "queued" else "running"  # a finished one is recorded below
    ctx.store.update_run(run_id, status=status, pid=obs.pid, start_time=obs.start_time,
                         host=handle.get("host") or os.uname().nodename, handle=handle)  # fmt: skip
    # The plan's estimate stays with the run, so the console can set the actual time beside it.
    outputs = {"run_id": run_id, "workdir": str(workdir), "estimate": ch.estimate}
    ctx.store.put_resource(new_row(ch, "running", outputs, prev))
    crash_point("after_submit")
    if ctx.wait or ch.address in ctx.needed:
        return wait_run(ctx, run_id)
    finish_runs(ctx.store, ex)
    run = ctx.store.run(run_id)
    if run is not None and run.status in ("succeeded", "failed"):
        return f"run {run_id} {run.status}"
    return f"run {run_id} {'queued' if status == 'queued' else 'submitted'}"


def _job_inputs(ctx: ApplyContext, spec: Any, tenant: str, kind: str) -> dict[str, Any]:
    mv = resolve_model(ctx, tenant, spec.model)
    datasets: dict[str, Any] = {}
    names: dict[str, str | None] = {}
    if kind == "finetune":
        names = {"train": spec.datasets.train, "validation": spec.datasets.validation}
    elif kind == "evaluation":
        names = {"eval": spec.dataset}
    elif kind == "compression":
        names = {"calibration": spec.calibration.dataset}
    for role, ds in names.items():
        if ds:
            d = ctx.loaded.stack.datasets[ds]
            datasets[role] = {"path": str((ctx.stack_dir / d.path).resolve()), "format": d.format}
    return {"model_dir": mv.path, "model_version": mv.version, "datasets": datasets}


def wait_run(ctx: ApplyContext, run_id: str, poll: float = 0.2) -> str:
    """Wait for a job to end, following its restarts: auto_restart (applied by `supervise_jobs`,
    as the daemon does) starts a new run of the same address that resumes from a checkpoint."""
    first = ctx.store.run(run_id)
    if first is None:
        raise ExecutorError(f"run {run_id} vanished from state")
    supervised = time.monotonic()
    while True:
        finish_runs(ctx.store, ctx.executor)
        run = ctx.store.last_run(first.address) or first
        # Supervision when the run ended (a restart may follow) and now and then for auto_stop;
        # not every poll: it reads every job of the stack.
        if run.status not in ACTIVE_RUN or time.monotonic() - supervised > SUPERVISE_EVERY_S:
            with FINISH_LOCK:  # parallel waits must not restart one job twice
                supervise_jobs(ctx.store, ctx.executor)
            supervised = time.monotonic()
            run = ctx.store.last_run(first.address) or first
        if run.status not in ACTIVE_RUN:
            break
        time.sleep(poll)
    if run.status != "succeeded":
        msg = f"run {run.run_id} {run.status}: {run.error or ''}".strip()
        # Exit code 1 is the runner saying the spec or data is wrong (CONTRACTS.md §2).
        raise PermanentError(msg) if run.exit_code == 1 else ExecutorError(msg)
    return f"run {run.run_id} succeeded"
