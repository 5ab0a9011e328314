"""Handler of deployments: start the instances the spec asks for, route the gateway to them once
healthy, then stop the ones they replace (rolling: no call dropped); repair routing a crash left.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.stack import address
from zsconf.engine import gates
from zsconf.engine.context import (
    ApplyContext,
    crash_point,
    desired_spec,
    gate_hold,
    record,
    resolve_model,
    split_address,
    sync_stack_gateway,
)
from zsconf.engine.gateway import GATEWAY, upstream_key
from zsconf.engine.refresh import instance_alive, routed_ids
from zsconf.engine.runs import flavor_cards, flavor_host, new_run_id
from zsconf.errors import ExecutorError, PermanentError
from zsconf.names import ACTIVE_RUN
from zsconf.plans import Action, Change
from zsconf.privfile import write_private
from zsconf.registry import runner, runner_argv
from zsconf.state import ModelVersion, RunRow

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
    _, tenant, _ = split_address(ch.address)
    assert tenant is not None
    current = [r for r in ctx.store.runs(ch.address) if r.status in ACTIVE_RUN]
    prev = ctx.store.resource(ch.address)
    host_before = (prev.outputs or {}).get("adapter_on") if prev is not None else None
    if ch.action is Action.DELETE or (ch.after and ch.after.get("state") == "stopped"):
        if prev is not None:
            _route(ctx, ch.address, [])
        for r in current:
            _stop_instance(ctx, r)
        if ch.action is Action.DELETE:
            ctx.store.remove_resource(ch.address)
        else:
            record(ctx, ch, status="stopped", outputs={"instances": []})
        if host_before:
            _reload_host(ctx, host_before)  # its servers drop the adapter
        return "destroyed" if ch.action is Action.DELETE else "stopped"
    spec = desired_spec(ctx, ch.address)
    if spec.adapter_on is not None:
        return _apply_adapter(ctx, ch, tenant, spec, current, host_before)
    rolled = _roll(ctx, ch.address, ch.after or {})
    mv = rolled.model_version
    record(ctx, ch, status="running", outputs={"model_version": mv.version})
    _switch(ctx, ch.address, rolled)
    held = gate_hold(ctx, tenant, spec.model, mv)
    if held:
        ctx.store.add_event("gate_held", held, ch.address)
    return f"{len(rolled.serving)} instance(s) of {spec.model} (v{mv.version})" + (
        f"; {held}" if held else ""
    )


def _apply_adapter(
    ctx: ApplyContext, ch: Change, tenant: str, spec: Any, current: list[RunRow], host_before: str | None
) -> str:
    """A LoRA fine-tune served as an adapter: no servers of its own; the host deployment's servers
    load it (a rolling restart of the host when its set of adapters changed), and the gateway
    routes this deployment's name to the host's instances."""
    host = address("deployment", tenant, spec.adapter_on)
    mv = resolve_model(ctx, tenant, spec.model)
    if not (Path(mv.path) / "adapter" / "adapter_config.json").is_file():
        raise PermanentError(
            f"{tenant}/{spec.model} v{mv.version} has no LoRA adapter folder ({mv.path}/adapter)"
        )
    for r in current:  # it had servers of its own before it became an adapter
        _stop_instance(ctx, r)
    _reload_host(ctx, host)
    if host_before and host_before != host:
        _reload_host(ctx, host_before)
    record(
        ctx, ch, status="running", outputs={"model_version": mv.version, "adapter_on": host, "instances": []}
    )
    sync_stack_gateway(ctx, wait_reload=True)
    return f"adapter {spec.model} (v{mv.version}) on {host}"


def _reload_host(ctx: ApplyContext, host: str) -> None:
    """Make the running host serve exactly the adapters the files attach to it (rolling: its
    instances are replaced when the set changed, kept when it did not)."""
    with ctx.lock_for(host):
        row = ctx.store.resource(host)
        if row is None or row.status != "running" or host not in ctx.graph.nodes:
            return  # not started yet: it loads its adapters when it starts
        _switch(ctx, host, _roll(ctx, host, row.spec or {}))


def _adapters(ctx: ApplyContext, host: str) -> dict[str, str]:
    """Served name -> adapter folder of every running deployment the files attach to `host` whose
    model has a usable version (one still training is added when it finishes)."""
    _, tenant, host_name = split_address(host)
    out: dict[str, str] = {}
    for addr, spec in ctx.graph.nodes.items():
        if ctx.graph.kinds[addr] != "deployments" or spec.adapter_on != host_name or spec.tenant != tenant:
            continue
        if spec.state != "running":
            continue
        chosen, _ = gates.resolve(ctx.store, tenant, spec.model)
        if chosen is not None and (Path(chosen.path) / "adapter").is_dir():
            out[addr.rsplit("/", 1)[-1]] = str(Path(chosen.path) / "adapter")
    return out


def _max_lora_rank(adapters: dict[str, str]) -> int | None:
    """The largest rank among the adapters, rounded up to one vLLM accepts."""
    ranks = []
    for folder in adapters.values():
        try:
            ranks.append(int(json.loads((Path(folder) / "adapter_config.json").read_text()).get("r", 8)))
        except (OSError, ValueError):
            continue
    if not ranks:
        return None
    return next((r for r in _VLLM_LORA_RANKS if r >= max(ranks)), max(ranks))


# The --max-lora-rank values vLLM accepts.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class _Rolled:
    model_version: ModelVersion
    serving: list[RunRow]  # healthy, to be routed
    retired: list[RunRow]  # to stop once the gateway routes to `serving`
    adapters: list[str]
    engine: str  # what serves it: "vllm", "embedded" or "diffusers" (the spec may say "auto")
    task: str  # the catalog's: what the gateway lets clients call it for
    images: dict[str, Any] | None  # a text-to-image model's options: the gateway checks requests


def _switch(ctx: ApplyContext, addr: str, rolled: _Rolled) -> None:
    """Route the gateway to the new instances, then stop the ones they replace: no call dropped."""
    _route(ctx, addr, rolled.serving, model_version=rolled.model_version.version, adapters=rolled.adapters,
           engine=rolled.engine, task=rolled.task, images=rolled.images)  # fmt: skip
    for r in rolled.retired:
        _stop_instance(ctx, r)


def _roll(ctx: ApplyContext, addr: str, after: dict[str, Any]) -> _Rolled:
    """Start the instances `addr` should run and wait until they are healthy; the caller routes to
    them and stops the rest (`_switch`)."""
    _, tenant, name = split_address(addr)
    assert tenant is not None
    ex = ctx.executor
    current = [r for r in ctx.store.runs(addr) if r.status in ACTIVE_RUN]
    spec = desired_spec(ctx, addr)
    mv = resolve_model(ctx, tenant, spec.model)
    # Instances of another content hash (replace) or another model version (upgrade) are stopped
    # after the new ones start.
    # What an instance runs: the fields that force a new server, the engine environment, the
    # adapters it loads and the model version's files. Anything else (qps, moderation, an upstream
    # job rerun that left the version alone) changes routing only, so running instances are kept.
    from schemas.deployments import Deployment
    from zsconf.engine.hashing import json_hash

    cards, device = flavor_cards(ctx.catalog, spec.flavor)
    inputs = _serving(ctx, addr, spec.engine, device)
    adapters = _adapters(ctx, addr)
    if adapters:
        if inputs["engine"] != "vllm":
            raise PermanentError(f"{addr} runs the {inputs['engine']} engine; adapters are served by vLLM")
        inputs["lora_modules"] = adapters
        inputs["max_lora_rank"] = _max_lora_rank(adapters)
    runs_what = {k: after.get(k) for k in sorted(Deployment.REPLACE)}
    runs_what["environment"] = inputs.get("engine_python")
    runs_what["adapters"] = adapters
    for what in ("images", "media_hosts"):  # absent for text models: their key stays as it was
        if what in inputs:
            runs_what[what] = inputs[what]
    gen_key = f"{json_hash([runs_what, mv.path, mv.content_hash])[:16]}|v{mv.version}"
    keep = [r for r in current if r.content_hash == gen_key]
    old = [r for r in current if r.content_hash != gen_key]
    alive: list[RunRow] = []
    for r in keep:
        if r.status == "intent":  # started before a crash? the executor's records know
            found = [
                h for h in ex.list_instances() if h.deployment == addr and h.index == r.handle.get("index")
            ]
            if found:
                r = ctx.store.update_run(r.run_id, status="running", pid=found[0].pid,
                                         start_time=found[0].start_time, handle=found[0].as_dict()) or r  # fmt: skip
        if r.status == "running" and instance_alive(ex, r):
            alive.append(r)
        elif r.status != "intent":
            ctx.store.update_run(r.run_id, status="failed", error="instance not running")
    intents = [r for r in keep if r.status == "intent" and r not in alive]
    started: list[RunRow] = []
    while len(alive) + len(started) < spec.instances:
        if intents:
            run = intents.pop(0)
        else:
            # Intent first, with the instance index the executor will file it under.
            index = len(ctx.store.runs(addr))
            run_id = new_run_id(addr, gen_key, f"i{index}")
            workdir = ctx.artifacts / "runs" / tenant / "deployment" / name / run_id
            run = ctx.store.add_run(RunRow(address=addr, run_id=run_id, content_hash=gen_key,
                                           workdir=str(workdir), handle={"index": index}))  # fmt: skip
        workdir = Path(run.workdir)
        envelope = {"run_id": run.run_id, "address": addr, "workdir": str(workdir), "output_dir": None,
                    "device": ctx.loaded.stack.platform.device, "spec": spec.model_dump(mode="json"),
                    "inputs": {"model_dir": mv.path, "model_version": mv.version,
                               "served_model_name": name, **inputs},
                    "resume": False}  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        write_private(workdir / "spec.json", json.dumps(envelope, indent=1))
        from zsconf.executors import InstanceRequest

        handle = ex.start_instance(
            InstanceRequest(deployment=addr, index=int(run.handle["index"]), workdir=str(workdir),
                            spec_path=str(workdir / "spec.json"), module=runner("deployment").module,
                            argv=runner_argv(runner("deployment"), str(workdir / "spec.json")),
                            cards=cards, device=device, **flavor_host(ctx.catalog, spec.flavor),
                            env={"ZSCONF_SERVE_API_KEY": upstream_key(ctx.stack_dir)})
        )  # fmt: skip
        crash_point("after_instance_start")
        run = ctx.store.update_run(run.run_id, status="running", pid=handle.pid, start_time=handle.start_time,
                                   host=handle.process.host, handle=handle.as_dict())  # fmt: skip
        assert run is not None
        crash_point("after_instance_running")  # recorded as running, not routed yet
        started.append(run)
    # New instances take traffic only once healthy; until then the old ones keep serving. So do
    # running ones the gateway does not route to yet (started by an apply that crashed before
    # routing them).
    row = ctx.store.resource(addr)
    routed = set(routed_ids(row)) if row is not None else set()
    unproven = [r for r in alive if r.run_id not in routed]
    for r in [*unproven, *started]:
        if not _wait_instance(ctx, r):
            ctx.store.update_run(r.run_id, status="failed", error="did not become healthy")
            raise ExecutorError(
                f"instance {r.run_id} of {addr} did not become healthy: {_log_tail(r.workdir)}"
            )
    alive.extend(started)
    return _Rolled(mv, alive[: spec.instances], [*alive[spec.instances :], *old], sorted(adapters),
                   inputs["engine"], inputs["task"], inputs.get("images"))  # fmt: skip


def _serving(ctx: ApplyContext, address: str, engine: str, flavor_device: str) -> dict[str, Any]:
    """The engine the plan chose (zsconf.serving), its environment installed first when missing,
    as the envelope's inputs: `engine`, `engine_python`, `tool_parser`; `task`, and for a
    text-to-image model what it accepts (`images`, which the gateway's config gets too)."""
    from zsconf import envs
    from zsconf.serving import choose

    base = ctx.graph.bases.get(address) if ctx.graph is not None else None
    entry = ctx.catalog.models.get(base) if ctx.catalog is not None and base else None
    task = entry.task if entry is not None else "text-generation"
    serving = choose(engine, flavor_device, task)
    if isinstance(serving, str):  # the graph refuses it; an environment lost since then lands here
        raise PermanentError(serving)
    out: dict[str, Any] = {"engine": serving.engine, "task": task}
    if entry is not None and entry.images is not None:
        out["images"] = entry.images.model_dump(mode="json")
    if task == "image-understanding":
        out["media_hosts"] = list(ctx.loaded.stack.platform.gateway.image_hosts)
    if serving.engine != "vllm":
        return out
    assert serving.environment is not None
    env_spec = envs.ENVIRONMENTS[serving.environment]
    installed = envs.installed(env_spec)
    if installed is None:
        what = (
            f"engine environment {env_spec.name} (once per user, about {envs.estimate_seconds(env_spec)} s)"
        )
        ctx.store.add_event("installing", what, address)
        ctx.emit(address, "installing", what)
        installed = envs.install(
            env_spec, quiet=True, progress=lambda line: ctx.emit(address, "installing", line)
        )
        ctx.store.add_event("installed", f"engine environment {env_spec.name} in {installed.path}", address)
    out["engine_python"] = str(installed.python)
    flavor = ctx.catalog.flavors.get(desired_spec(ctx, address).flavor) if ctx.catalog is not None else None
    if serving.device == "cpu" and flavor is not None:
        # An eighth of the flavor's memory, at least 1 GiB: vLLM's CPU default takes 90 % of the host.
        out["kv_cache_memory_bytes"] = max(1, int(flavor.memory_gb) // 8) * 2**30
    if entry is not None and entry.tool_parser:
        out["tool_parser"] = entry.tool_parser
    return out


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
