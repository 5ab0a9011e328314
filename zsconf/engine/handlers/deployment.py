"""Handler of deployments: start the instances the spec asks for, route the gateway to them once
healthy, then stop the ones they replace (rolling: no call dropped); repair routing a crash left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zsconf.engine.context import (
    ApplyContext,
    crash_point,
    desired_spec,
    gate_hold,
    record,
    resolve_model,
    resolved_spec,
    split_address,
    sync_stack_gateway,
)
from zsconf.engine.gateway import GATEWAY, upstream_key
from zsconf.engine.refresh import instance_alive, routed_ids
from zsconf.engine.runs import flavor_cards, new_run_id
from zsconf.errors import ExecutorError
from zsconf.names import ACTIVE_RUN
from zsconf.plans import Action, Change
from zsconf.privfile import write_private
from zsconf.registry import runner, runner_argv
from zsconf.state import RunRow

__all__ = ["apply_deployment"]


def _stop_instance(ctx: ApplyContext, run: RunRow) -> None:
    """SIGTERM: the server finishes its in-flight requests (the gateway no longer routes to it)."""
    if run.handle.get("process"):
        from zsconf.executors import InstanceHandle

        ctx.executor.stop_instance(InstanceHandle.from_dict(run.handle), grace_s=30.0)
    ctx.store.update_run(run.run_id, status="cancelled")


def _route(ctx: ApplyContext, address: str, runs: list[RunRow], **outputs: Any) -> None:
    """Record which instances serve `address` and make the gateway route to exactly those before
    the caller stops any other one: scaling down and upgrades drop no request."""
    instances = [
        {"run_id": r.run_id, "pid": r.pid, "workdir": r.workdir, "endpoint": r.handle.get("url")}
        for r in runs
    ]
    ctx.store.update_resource(address, outputs={**outputs, "instances": instances})
    try:
        sync_stack_gateway(ctx, wait_reload=True)
    except ExecutorError as exc:  # reported again by the final sync of this apply
        ctx.store.add_event("failed", f"gateway: {exc}", GATEWAY)


def apply_deployment(ctx: ApplyContext, ch: Change) -> str:
    _, tenant, name = split_address(ch.address)
    assert tenant is not None
    ex = ctx.executor
    runs = ctx.store.runs(ch.address)
    current = [r for r in runs if r.status in ACTIVE_RUN]
    if ch.action is Action.DELETE or (ch.after and ch.after.get("state") == "stopped"):
        if ctx.store.resource(ch.address) is not None:
            _route(ctx, ch.address, [])
        for r in current:
            _stop_instance(ctx, r)
        if ch.action is Action.DELETE:
            ctx.store.remove_resource(ch.address)
            return "destroyed"
        record(ctx, ch, status="stopped", outputs={"instances": []})
        return "stopped"
    spec = desired_spec(ctx, ch.address)
    mv = resolve_model(ctx, tenant, spec.model)
    # Instances of another content hash (replace) or another model version (upgrade) are stopped
    # after the new ones start.
    # What an instance runs: the fields that force a new server, and the model version's files.
    # Anything else (qps, moderation, an upstream job rerun that left the version alone) changes
    # routing only, so running instances are kept.
    from schemas.deployments import Deployment
    from zsconf.engine.hashing import json_hash

    runs_what = {k: (ch.after or {}).get(k) for k in sorted(Deployment.REPLACE)}
    gen_key = f"{json_hash([runs_what, mv.path, mv.content_hash])[:16]}|v{mv.version}"
    keep = [r for r in current if r.content_hash == gen_key]
    old = [r for r in current if r.content_hash != gen_key]
    alive: list[RunRow] = []
    for r in keep:
        if r.status == "intent":  # started before a crash? the executor's records know
            found = [
                h
                for h in ex.list_instances()
                if h.deployment == ch.address and h.index == r.handle.get("index")
            ]
            if found:
                r = ctx.store.update_run(r.run_id, status="running", pid=found[0].pid,
                                         start_time=found[0].start_time, handle=found[0].as_dict()) or r  # fmt: skip
        if r.status == "running" and instance_alive(ex, r):
            alive.append(r)
        elif r.status != "intent":
            ctx.store.update_run(r.run_id, status="failed", error="instance not running")
    intents = [r for r in keep if r.status == "intent" and r not in alive]
    cards, device = flavor_cards(ctx.catalog, spec.flavor)
    started: list[RunRow] = []
    while len(alive) + len(started) < spec.instances:
        if intents:
            run = intents.pop(0)
        else:
            # Intent first, with the instance index the executor will file it under.
            index = len(ctx.store.runs(ch.address))
            run_id = new_run_id(ch.address, gen_key, f"i{index}")
            workdir = ctx.artifacts / "runs" / tenant / "deployment" / name / run_id
            run = ctx.store.add_run(RunRow(address=ch.address, run_id=run_id, content_hash=gen_key,
                                           workdir=str(workdir), handle={"index": index}))  # fmt: skip
        workdir = Path(run.workdir)
        envelope = {"run_id": run.run_id, "address": ch.address, "workdir": str(workdir), "output_dir": None,
                    "device": ctx.loaded.stack.platform.device, "spec": resolved_spec(ctx, ch),
                    "inputs": {"model_dir": mv.path, "model_version": mv.version,
                               "served_model_name": name},
                    "resume": False}  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        write_private(workdir / "spec.json", json.dumps(envelope, indent=1))
        from zsconf.executors import InstanceRequest

        handle = ex.start_instance(
            InstanceRequest(deployment=ch.address, index=int(run.handle["index"]), workdir=str(workdir),
                            spec_path=str(workdir / "spec.json"), module=runner("deployment").module,
                            argv=runner_argv(runner("deployment"), str(workdir / "spec.json")),
                            cards=cards, device=device,
                            env={"ZSCONF_SERVE_API_KEY": upstream_key(ctx.stack_dir)})
        )  # fmt: skip
        crash_point("after_instance_start")
        run = ctx.store.update_run(run.run_id, status="running", pid=handle.pid, start_time=handle.start_time,
                                   host=os.uname().nodename, handle=handle.as_dict())  # fmt: skip
        assert run is not None
        crash_point("after_instance_running")  # recorded as running, not routed yet
        started.append(run)
    # New instances take traffic only once healthy; until then the old ones keep serving. So do
    # running ones the gateway does not route to yet (started by an apply that crashed before
    # routing them).
    row = ctx.store.resource(ch.address)
    routed = set(routed_ids(row)) if row is not None else set()
    unproven = [r for r in alive if r.run_id not in routed]
    for r in [*unproven, *started]:
        if not _wait_instance(ctx, r):
            ctx.store.update_run(r.run_id, status="failed", error="did not become healthy")
            raise ExecutorError(
                f"instance {r.run_id} of {ch.address} did not become healthy: {_log_tail(r.workdir)}"
            )
    alive.extend(started)
    serving = alive[: spec.instances]
    record(ctx, ch, status="running", outputs={"model_version": mv.version})
    _route(ctx, ch.address, serving, model_version=mv.version)
    for r in alive[spec.instances :]:
        _stop_instance(ctx, r)
    for r in old:
        _stop_instance(ctx, r)
    held = gate_hold(ctx, tenant, spec.model, mv)
    if held:
        ctx.store.add_event("gate_held", held, ch.address)
    return f"{len(serving)} instance(s) of {spec.model} (v{mv.version})" + (f"; {held}" if held else "")


_READY_TIMEOUT_S = float(os.environ.get("ZSCONF_INSTANCE_READY_TIMEOUT", "600"))


def _wait_instance(ctx: ApplyContext, run: RunRow) -> bool:
    from zsconf.executors import InstanceHandle

    return bool(ctx.executor.wait_healthy(InstanceHandle.from_dict(run.handle), timeout_s=_READY_TIMEOUT_S))


def _log_tail(workdir: str, lines: int = 3) -> str:
    try:
        text = (Path(workdir) / "runner.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "empty log"
