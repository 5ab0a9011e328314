"""Apply a plan: execute its changes in dependency order, independent ones in parallel.

Called by the CLI (`zsconf apply`, `destroy`) and the daemon through `zsconf.engine`. Refuses an
errored plan (`Plan.can_apply()`); returns an `ApplyResult` (what was done, diagnostics, secrets
to show once) - a partial apply is a result, not an exception.

Crash safety: every side effect is preceded by an intent row (a RunRow in status "intent", with a
run id derived from the address and the content hash) and followed by the result. A re-run finds
the intent, adopts a process already started for that run id (the executor's records, else
`launcher.find_run` by the run id in the environment) or a
result already written, and starts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.common import parse_model_ref
from zsconf.engine import gates, launcher
from zsconf.engine.gateway import GATEWAY, GatewayInfo, sync_gateway, upstream_key
from zsconf.engine.hashing import dir_digest
from zsconf.engine.refresh import instance_alive, read_result, refresh, routed_ids
from zsconf.errors import ExecutorError, PermanentError, PlanError
from zsconf.keys import NewKey, create_key, unshown_keys
from zsconf.names import ACTIVE_RUN, JOB_KINDS
from zsconf.plans import Action, Change, Plan
from zsconf.privfile import write_private
from zsconf.state import ModelVersion, ResourceRow, RunRow, Store

if TYPE_CHECKING:
    from zsconf.catalog import Catalog
    from zsconf.executors import JobRequest

__all__ = ["ApplyResult", "apply_plan", "finish_runs", "runner_module"]

DEFAULT_RUNNERS = {
    "finetune": "runners.train",
    "compression": "runners.compress",
    "evaluation": "runners.evaluate",
    "deployment": "runners.serve",
}


def runner_module(kind: str) -> str:
    """Runner module for a kind. Test-only override: env ZSCONF_RUNNER_MODULE_<KIND> (upper case),
    e.g. ZSCONF_RUNNER_MODULE_FINETUNE=tests.fake_runners.job."""
    return os.environ.get(f"ZSCONF_RUNNER_MODULE_{kind.upper()}", DEFAULT_RUNNERS[kind])


@dataclass(frozen=True)
class ActionOutcome:
    """How one action ended. Not `ok`: `skipped` (not attempted: a dependency failed), or failed,
    `permanent` when retrying cannot help until the files or the world change (PermanentError),
    else worth retrying later."""

    address: str
    action: Action
    ok: bool
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False
    permanent: bool = False


@dataclass
class ApplyResult:
    outcomes: list[ActionOutcome] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)
    # Keys created and not shown yet (this apply's and an interrupted one's): the caller prints
    # them, then `zsconf.keys.forget_keys`. Never stored in the state, never logged.
    new_keys: list[NewKey] = field(default_factory=list)
    serial: int = 0
    gateway_url: str | None = None  # the OpenAI base URL of the stack's gateway, when it runs

    @property
    def ok(self) -> bool:
        return not self.diagnostics and all(o.ok for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "changed": 0, "replaced": 0, "destroyed": 0, "failed": 0, "skipped": 0}
        for o in self.outcomes:
            if o.ok:
                out[o.action.counted_as] += 1
            elif o.skipped:
                out["skipped"] += 1
            else:
                out["failed"] += 1
        return out


class _Ctx:
    def __init__(
        self, plan: Plan, loaded: Any, graph: Any, store: Store, wait: bool, catalog: Any, executor: Any
    ) -> None:
        self.plan = plan
        self.executor = executor
        self.loaded = loaded
        self.graph = graph
        self.store = store
        self.wait = wait
        self.catalog = catalog
        self.stack_dir = Path(plan.stack_dir)
        storage = loaded.stack.platform.storage if loaded is not None else ".zsconf/artifacts"
        self.artifacts = (self.stack_dir / storage).resolve()
        self.lock = threading.Lock()
        # Jobs that another change of this plan depends on are followed to completion: their
        # model version is the dependent's input.
        self.needed = {d for c in plan.actionable() if c.action is not Action.DELETE for d in c.dependencies}


def apply_plan(
    plan: Plan,
    loaded: Any,
    graph: Any,
    store: Store,
    *,
    parallelism: int = 4,
    wait: bool = False,
    catalog: Any = None,
    executor: Any = None,
    on_event: Callable[[str, str, str], None] | None = None,
) -> ApplyResult:
    """Execute `plan` with `executor` (a `zsconf.executors.Executor`; default: the local one
    under `<stack>/.zsconf/executor`). `on_event(address, phase, message)` feeds a progress
    display."""
    if not plan.can_apply():
        raise PlanError("the plan has errors and cannot be applied:\n" + "\n".join(plan.errors))
    if executor is None:
        executor = default_executor(Path(plan.stack_dir))
    result = ApplyResult()
    ctx = _Ctx(plan, loaded, graph, store, wait, catalog, executor)
    emit = on_event or (lambda a, p, m: None)
    finish_runs(store, executor)
    todo = {c.address: c for c in plan.actionable()}
    # Creates/updates wait for their dependencies; deletes wait for their dependents' deletes.
    deps: dict[str, set[str]] = {}
    for addr, ch in todo.items():
        if ch.action is Action.DELETE:
            deps[addr] = {
                o.address for o in todo.values()
                if o.action is Action.DELETE and addr in o.dependencies
            }  # fmt: skip
        else:
            deps[addr] = {d for d in ch.dependencies if d in todo}
    for addr, evals in gating_evaluations(todo).items():
        deps[addr] |= evals  # a gated version must not take traffic before its verdict
        ctx.needed |= evals
    failed: set[str] = set()
    done: set[str] = set()
    running: dict[Future[ActionOutcome], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        while len(done) + len(failed) < len(todo):
            for addr, ch in todo.items():
                if addr in done or addr in failed or addr in running.values():
                    continue
                if deps[addr] & failed:
                    failed.add(addr)
                    result.outcomes.append(
                        ActionOutcome(addr, ch.action, False, "skipped: a dependency failed", skipped=True)
                    )
                    emit(addr, "skipped", "a dependency failed")
                    continue
                if deps[addr] <= done:
                    emit(addr, "start", ch.action.value)
                    running[pool.submit(_run_one, ctx, ch)] = addr
            if not running:
                continue
            finished, _ = wait_futures(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                addr = running.pop(fut)
                outcome = fut.result()
                result.outcomes.append(outcome)
                (done if outcome.ok else failed).add(addr)
                emit(addr, "done" if outcome.ok else "failed", outcome.message)
                if not outcome.ok:
                    result.diagnostics.append(f"{addr}: {outcome.message}")
    if loaded is not None:
        try:
            gw = _sync_gateway(ctx)
            result.gateway_url = gw.url if gw else None
        except ExecutorError as exc:
            result.diagnostics.append(f"gateway: {exc}")
            store.add_event("failed", f"gateway: {exc}", GATEWAY)
    # Every key not shown yet: this apply's, and any an interrupted one created.
    result.new_keys = unshown_keys(store, ctx.stack_dir)
    result.serial = store.serial()
    store.add_event("apply", f"apply finished: {result.counts()}", None, counts=result.counts())
    return result


def gating_evaluations(todo: dict[str, Change]) -> dict[str, set[str]]:
    """deployment -> evaluations in this plan that have a gate and score the model it serves."""
    gated: dict[tuple[str, str], set[str]] = {}
    for addr, ch in todo.items():
        has_gate = ch.after and any(v is not None for v in (ch.after.get("gate") or {}).values())
        if ch.kind == "evaluation" and ch.action is not Action.DELETE and has_gate:
            key = (_split(addr)[1] or "", parse_model_ref(ch.after["model"])[0])  # type: ignore[index]
            gated.setdefault(key, set()).add(addr)
    out: dict[str, set[str]] = {}
    for addr, ch in todo.items():
        if ch.kind == "deployment" and ch.action is not Action.DELETE and ch.after:
            evals = gated.get((_split(addr)[1] or "", parse_model_ref(ch.after["model"])[0]))
            if evals:
                out[addr] = evals
    return out


def default_executor(stack_dir: Path) -> Any:
    """The local executor, its bookkeeping under $ZSCONF_EXECUTOR_ROOT or <stack>/.zsconf/executor
    (so the CLI and the daemon of one stack share one queue)."""
    from zsconf.executors import get_executor

    root = os.environ.get("ZSCONF_EXECUTOR_ROOT") or Path(stack_dir) / ".zsconf" / "executor"
    return get_executor("local", root=root)


def _crash_point(name: str) -> None:
    """Test-only: `ZSCONF_TEST_KILL_AT=<name>` kills this process with SIGKILL here, so the crash
    tests can stop apply at exact points between intent, side effect and result."""
    if os.environ.get("ZSCONF_TEST_KILL_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _run_one(ctx: _Ctx, ch: Change) -> ActionOutcome:
    t0 = time.monotonic()
    try:
        if ch.action is not Action.DELETE:
            _await_running_inputs(ctx, ch)
        msg = _ACTIONS[ch.kind](ctx, ch) or ""
        ok = True
    except Exception as exc:  # an action's failure is a diagnostic, never an abort
        ours = isinstance(exc, PlanError | ExecutorError | PermanentError)
        msg = str(exc) if ours else f"{type(exc).__name__}: {exc}"
        ctx.store.add_event("failed", msg, ch.address)
        return ActionOutcome(ch.address, ch.action, False, msg, time.monotonic() - t0,
                             permanent=isinstance(exc, PermanentError))  # fmt: skip
    return ActionOutcome(ch.address, ch.action, ok, msg, time.monotonic() - t0)


def _await_running_inputs(ctx: _Ctx, ch: Change) -> None:
    """A dependency that is a job still running from an earlier apply (not part of this plan)
    produces this change's input: follow it to completion first."""
    for dep in ch.dependencies:
        row = ctx.store.resource(dep)
        if (
            row is not None
            and row.kind in JOB_KINDS
            and row.status == "running"
            and row.outputs.get("run_id")
        ):
            _wait_run(ctx, row.outputs["run_id"])


# -- helpers -----------------------------------------------------------------------------------
def _row(
    ch: Change, status: str, outputs: dict[str, Any] | None = None, prev: ResourceRow | None = None
) -> ResourceRow:
    kind, tenant, name = _split(ch.address)
    return ResourceRow(
        address=ch.address,
        kind=kind,
        tenant=tenant,
        name=name,
        spec=ch.after or {},
        content_hash=ch.content_hash,
        secrets_digest=ch.secrets_digest,
        status=status,
        outputs=outputs if outputs is not None else (dict(prev.outputs) if prev else {}),
        dependencies=ch.dependencies,
        generation=(prev.generation + 1) if prev else 1,
    )


def _split(addr: str) -> tuple[str, str | None, str]:
    parts = addr.split("/")
    return (parts[0], None, parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def _spec(ctx: _Ctx, addr: str) -> Any:
    return ctx.graph.nodes[addr]


def _resolved(ctx: _Ctx, ch: Change) -> dict[str, Any]:
    """The spec as the runner needs it, secrets resolved (the plan and the state hold it masked):
    it goes only into the run's spec.json, mode 0600."""
    return ctx.graph.nodes[ch.address].model_dump(mode="json")


def _record(
    ctx: _Ctx, ch: Change, status: str = "applied", outputs: dict[str, Any] | None = None
) -> ResourceRow:
    prev = ctx.store.resource(ch.address)
    row = ctx.store.put_resource(_row(ch, status, outputs, prev))
    ctx.store.add_event(ch.action.verb, f"{ch.address} {ch.action.verb}", ch.address)
    return row


def _resolve_model(ctx: _Ctx, tenant: str, ref: str) -> ModelVersion:
    """The version `ref` uses now: never one that failed a quality gate."""
    chosen, skipped = gates.resolve(ctx.store, tenant, ref)
    if chosen is None:
        held = gates.held_message(ctx.store, tenant, ref, chosen, skipped)
        raise ExecutorError(f"model {tenant}/{ref} has no usable version" + (f": {held}" if held else " yet"))
    return chosen


def _gate_hold(ctx: _Ctx, tenant: str, ref: str, chosen: ModelVersion) -> str:
    """Why a deployment serves `chosen` rather than a newer version ('' when it does not)."""
    _, skipped = gates.resolve(ctx.store, tenant, ref)
    return gates.held_message(ctx.store, tenant, ref, chosen, skipped)


def _next_version(ctx: _Ctx, tenant: str, model: str) -> int:
    have = ctx.store.model_versions(tenant, model)
    return (max(v.version for v in have) + 1) if have else 1


# -- per kind ----------------------------------------------------------------------------------
def _tenant(ctx: _Ctx, ch: Change) -> str:
    if ch.action is Action.DELETE:
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    _record(ctx, ch)
    return "recorded"


def _dataset(ctx: _Ctx, ch: Change) -> str:
    if ch.action is Action.DELETE:
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    spec = _spec(ctx, ch.address)
    path = ctx.stack_dir / spec.path
    if not path.is_file():
        raise PermanentError(f"dataset file {path} does not exist")
    from zsconf.engine.hashing import file_digest

    _record(ctx, ch, outputs={"path": str(path.resolve()), "sha256": file_digest(path)})
    return f"sha256 {file_digest(path)[:12]}"


def _model(ctx: _Ctx, ch: Change) -> str:
    _, tenant, name = _split(ch.address)
    assert tenant is not None
    if ch.action is Action.DELETE:
        ctx.store.remove_model_versions(tenant, name)
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    if ch.action is Action.UPDATE:
        _record(ctx, ch)
        return "updated"
    spec = _spec(ctx, ch.address)
    if ch.action is Action.REPLACE:
        ctx.store.remove_model_versions(tenant, name)
    if spec.path:
        p = Path(spec.path)
        src = p if p.is_absolute() else ctx.stack_dir / p
        if not (src / "config.json").exists():
            raise PermanentError(f"model folder {src} does not exist or has no config.json")
        path, fmt = src.resolve(), "huggingface"
        if spec.validate_weights:
            _validate(ctx, ch, src)
        validated = spec.validate_weights
    elif spec.base.startswith("debug/"):
        path = ctx.artifacts / "base" / spec.base.replace("/", "_")
        if not (path / "config.json").exists():
            _build_debug_base(ctx, spec.base, path)
        fmt, validated = "huggingface", True
    else:
        path, fmt, validated = Path(""), "catalog", False
    quant = None if spec.quantization == "none" else spec.quantization
    ctx.store.add_model_version(
        ModelVersion(tenant=tenant, model=name, version=1, source_address=ch.address,
                     content_hash=ch.content_hash, path=str(path) if str(path) != "." else "",
                     format=fmt, quantization=quant, validated=validated)
    )  # fmt: skip
    _record(ctx, ch, outputs={"versions": [1], "path": str(path)})
    return f"version 1 at {path}"


def _validate(ctx: _Ctx, ch: Change, src: Path) -> None:
    """The platform's weight checks on an imported folder, in a runner process (transformers)."""
    workdir = ctx.artifacts / "runs" / ch.address.replace("/", "_") / "validate"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    # schemas/run_validate.py (ValidateRunSpec)
    spec_path.write_text(json.dumps({"run_id": "validate-" + ch.content_hash[:12], "address": ch.address,
                                     "workdir": str(workdir), "model_dir": str(src.resolve()),
                                     "quantized": (ch.after or {}).get("quantization", "none") != "none"}))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "runners.validate", str(spec_path)], cwd=workdir,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        why = f"weight validation failed for {src}: {proc.stdout[-500:]}{proc.stderr[-500:]}"
        raise PermanentError(why) if proc.returncode == 1 else ExecutorError(why)


def _build_debug_base(ctx: _Ctx, base: str, path: Path) -> None:
    cat = ctx.catalog
    if cat is None:
        from zsconf.engine.estimates import _catalog

        cat = _catalog()
    if cat is None:
        raise ExecutorError(f"cannot build {base}: the catalog (zsconf.catalog) is not available")
    entry = cat.model(base)
    entry_dict = entry.model_dump(mode="json") if hasattr(entry, "model_dump") else dict(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = path.parent / f"{path.name}.spec.json"
    spec_path.write_text(json.dumps({"entry": {"name": base, **entry_dict}, "output_dir": str(path)}))
    proc = subprocess.run([sys.executable, "-m", "runners.debug_models", str(spec_path)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise ExecutorError(f"building {base} failed: {proc.stderr[-800:]}")


SUPERVISE_EVERY_S = 5.0  # apply --wait: how often auto_stop is checked while a job runs


def new_run_id(addr: str, content_hash: str, suffix: str = "") -> str:
    """Derived, not random: a start retried after a crash finds its own intent row."""
    return "r-" + hashlib.sha256(f"{addr}|{content_hash}|{suffix}".encode()).hexdigest()[:12]


def _cards(catalog: Catalog, flavor: str) -> tuple[int, str]:
    """(cards per node, device) of a catalog flavor; (0, "cpu") when unknown."""
    try:
        fl = catalog.flavor(flavor)
    except Exception:
        return 0, "cpu"
    return int(getattr(fl, "cards", 0) or 0), str(getattr(fl, "device", "cpu") or "cpu")


def job_request(
    catalog: Catalog, run_id: str, address: str, tenant: str, resources: dict[str, Any],
    spec_path: Path, workdir: Path, max_cards: int | None,
) -> JobRequest:  # fmt: skip
    """The executor's request for one attempt of a job: one rule for apply's first attempt and
    the supervisor's restarts (`zsconf.engine.jobs`)."""
    from zsconf.executors import JobRequest

    kind = address.split("/", 1)[0]
    cards, device = _cards(catalog, resources.get("flavor") or "cpu.small")
    return JobRequest(
        run_id=run_id, address=address, spec_path=str(spec_path), workdir=str(workdir),
        module=runner_module(kind), kind=kind, cards=cards, nodes=int(resources.get("nodes") or 1),
        device=device, priority=int(resources.get("priority") or 0), tenant=tenant,
        max_cards_for_tenant=max_cards, deepspeed_stage=resources.get("deepspeed_stage"),
    )  # fmt: skip


def _job(ctx: _Ctx, ch: Change) -> str:
    kind, tenant, name = _split(ch.address)
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
        _record(ctx, ch, status=(ctx.store.resource(ch.address) or _row(ch, "applied")).status)
        return "updated in place"
    spec = _spec(ctx, ch.address)
    # Adopt an unfinished run of this content (a re-run after a crash); otherwise a new attempt.
    # The run id is fixed before any side effect, so a crash after this point is resumable.
    runs = ctx.store.runs(ch.address)
    active = [r for r in runs if r.content_hash == ch.content_hash and r.status in ACTIVE_RUN]
    run = active[-1] if active else None
    run_id = run.run_id if run else new_run_id(ch.address, ch.content_hash, f"a{len(runs) + 1}")
    workdir = ctx.artifacts / "runs" / tenant / kind / name / run_id
    out_dir: Path | None = None
    if kind != "evaluation":
        version = _next_version(ctx, tenant, spec.output.model)
        out_dir = ctx.artifacts / "models" / tenant / spec.output.model / f"v{version}"
    if run is None:
        # Intent first: a crash after this line is resumed by adopting or starting this run id.
        run = ctx.store.add_run(RunRow(address=ch.address, run_id=run_id, content_hash=ch.content_hash,
                                       attempt=len(runs) + 1, workdir=str(workdir),
                                       output_dir=str(out_dir) if out_dir else None))  # fmt: skip
        _crash_point("after_intent")
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
                    "device": ctx.loaded.stack.platform.device, "spec": _resolved(ctx, ch), "inputs": inputs,
                    "resume": (workdir / "checkpoints").exists()}  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        write_private(spec_path, json.dumps(envelope, indent=1))
        quotas = ctx.loaded.stack.tenants[tenant].quotas
        sub = ex.submit(job_request(ctx.catalog, run_id, ch.address, tenant, spec.resources.model_dump(),
                                    spec_path, workdir, quotas.max_cards))  # fmt: skip
        _crash_point("after_start")
        where = f"pid {sub.handle.pid}" if sub.handle else f"queued behind {', '.join(sub.waiting_behind)}"
        ctx.store.add_event("submitted", f"run {run_id} submitted ({where})", ch.address)
        obs = ex.observe(run_id)
    handle = {}
    if obs.pid:
        handle = {"pid": obs.pid, "start_time": obs.start_time, "pgid": obs.pid,
                  "host": os.uname().nodename, "workdir": str(workdir)}  # fmt: skip
    status = "queued" if obs.state == "queued" else "running"  # a finished one is recorded below
    ctx.store.update_run(run_id, status=status, pid=obs.pid, start_time=obs.start_time,
                         host=os.uname().nodename, handle=handle)  # fmt: skip
    ctx.store.put_resource(_row(ch, "running", {"run_id": run_id, "workdir": str(workdir)}, prev))
    _crash_point("after_submit")
    if ctx.wait or ch.address in ctx.needed:
        return _wait_run(ctx, run_id)
    finish_runs(ctx.store, ex)
    run = ctx.store.run(run_id)
    if run is not None and run.status in ("succeeded", "failed"):
        return f"run {run_id} {run.status}"
    return f"run {run_id} {'queued' if status == 'queued' else 'submitted'}"


def _job_inputs(ctx: _Ctx, spec: Any, tenant: str, kind: str) -> dict[str, Any]:
    mv = _resolve_model(ctx, tenant, spec.model)
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


def _wait_run(ctx: _Ctx, run_id: str, poll: float = 0.2) -> str:
    """Wait for a job to end, following its restarts: auto_restart (applied by `supervise_jobs`,
    as the daemon does) starts a new run of the same address that resumes from a checkpoint."""
    from zsconf.engine.jobs import supervise_jobs

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
            with _FINISH_LOCK:  # parallel waits must not restart one job twice
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


def finish_runs(store: Store, executor: Any) -> list[str]:
    """Record job runs that ended since last seen: status, and the model version they produced.
    Idempotent (a version is registered once per run). Called by apply and the daemon."""
    done: list[str] = []
    with _FINISH_LOCK:  # parallel waits must not number two versions alike
        for run, obs in refresh(store, executor=executor).finished:
            _finish_one(store, run, obs)
            done.append(run.run_id)
    return done


_FINISH_LOCK = threading.Lock()


def _gate_status(res: dict[str, Any]) -> str | None:
    """ "passed" / "failed" from a runner's `outputs.gate.passed`; None when it has no gate."""
    gate = (res.get("outputs") or {}).get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        return None
    return "passed" if gate["passed"] else "failed"


def _finish_one(store: Store, run: RunRow, obs: Any) -> None:
    res = read_result(run.workdir) or {}
    row = store.resource(run.address)
    status = "succeeded" if obs.state == "succeeded" and res.get("status") == "succeeded" else "failed"
    if obs.state == "stopped":
        status = "cancelled"
    if status == "failed" and not res.get("error"):
        res["error"] = obs.message or f"exit code {obs.exit_code}"
    if status == "succeeded" and row is not None and row.kind in ("finetune", "compression"):
        out = row.spec.get("output", {})
        model_dir = (res.get("outputs") or {}).get("model_dir") or run.output_dir
        existing = [
            v for v in store.model_versions(row.tenant, out.get("model")) if v.source_run == run.run_id
        ]
        if not existing:
            have = store.model_versions(row.tenant, out.get("model"))
            version = (max(v.version for v in have) + 1) if have else 1
            quant = row.spec.get("strategy") if row.kind == "compression" else None
            store.add_model_version(
                ModelVersion(tenant=row.tenant or "", model=out.get("model"), version=version,
                             source_address=run.address, source_run=run.run_id,
                             content_hash=dir_digest(Path(model_dir)) if model_dir else "",
                             path=model_dir or "", quantization=quant, validated=True,
                             gate_status=_gate_status(res))
            )  # fmt: skip
            _crash_point("after_version")
    if status == "succeeded" and row is not None and _gate_status(res) == "failed":
        _record_gate_failure(store, row, run, res)
    # the process's own start and end as the executor saw them (auto_stop adds up attempts' time)
    started = datetime.fromtimestamp(obs.started_at, UTC) if obs.started_at else run.started_at
    finished = datetime.fromtimestamp(obs.ended_at or time.time(), UTC)
    store.update_run(run.run_id, status=status, error=res.get("error"), exit_code=obs.exit_code,
                     started_at=started, finished_at=finished)  # fmt: skip
    if row is not None and row.content_hash == run.content_hash:
        outputs = dict(row.outputs)
        outputs.update({"run_id": run.run_id, "result": res.get("outputs") or {}})
        store.update_resource(run.address, status=status, outputs=outputs)
    store.add_event(f"run_{status}", f"run {run.run_id} {status}", run.address)


def _record_gate_failure(store: Store, row: Any, run: RunRow, res: dict[str, Any]) -> None:
    """A compression's gate judges the version it made; an evaluation's, the version it scored."""
    reason = gates.gate_summary(res.get("outputs") or {})
    if row.kind == "compression":
        model = row.spec.get("output", {}).get("model")
        made = [v for v in store.model_versions(row.tenant, model) if v.source_run == run.run_id]
        version = made[-1].version if made else None
    else:
        model = parse_model_ref(row.spec.get("model", ""))[0]
        try:
            envelope = json.loads((Path(run.workdir) / "spec.json").read_text())
            version = int(envelope["inputs"]["model_version"])
        except (OSError, ValueError, KeyError, TypeError):
            version = None
    if model and version is not None:
        gates.mark_failed(store, row.tenant or "", model, version, reason, run.address)


def _stop_instance(ctx: _Ctx, run: RunRow) -> None:
    """SIGTERM: the server finishes its in-flight requests (the gateway no longer routes to it)."""
    if run.handle.get("process"):
        from zsconf.executors import InstanceHandle

        ctx.executor.stop_instance(InstanceHandle.from_dict(run.handle), grace_s=30.0)
    ctx.store.update_run(run.run_id, status="cancelled")


def _sync_gateway(ctx: _Ctx, wait_reload: bool = False) -> GatewayInfo | None:
    platform = ctx.loaded.stack.platform if ctx.loaded is not None else None
    with ctx.lock:  # one writer of the config per apply (actions run on a thread pool)
        return sync_gateway(ctx.store, ctx.executor, ctx.stack_dir, platform, wait_reload=wait_reload)


def _route(ctx: _Ctx, address: str, runs: list[RunRow], **outputs: Any) -> None:
    """Record which instances serve `address` and make the gateway route to exactly those before
    the caller stops any other one: scaling down and upgrades drop no request."""
    instances = [
        {"run_id": r.run_id, "pid": r.pid, "workdir": r.workdir, "endpoint": r.handle.get("url")}
        for r in runs
    ]
    ctx.store.update_resource(address, outputs={**outputs, "instances": instances})
    try:
        _sync_gateway(ctx, wait_reload=True)
    except ExecutorError as exc:  # reported again by the final sync of this apply
        ctx.store.add_event("failed", f"gateway: {exc}", GATEWAY)


def _deployment(ctx: _Ctx, ch: Change) -> str:
    _, tenant, name = _split(ch.address)
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
        _record(ctx, ch, status="stopped", outputs={"instances": []})
        return "stopped"
    spec = _spec(ctx, ch.address)
    mv = _resolve_model(ctx, tenant, spec.model)
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
    cards, device = _cards(ctx.catalog, spec.flavor)
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
                    "device": ctx.loaded.stack.platform.device, "spec": _resolved(ctx, ch),
                    "inputs": {"model_dir": mv.path, "model_version": mv.version,
                               "served_model_name": name},
                    "resume": False}  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        write_private(workdir / "spec.json", json.dumps(envelope, indent=1))
        from zsconf.executors import InstanceRequest

        handle = ex.start_instance(
            InstanceRequest(deployment=ch.address, index=int(run.handle["index"]), workdir=str(workdir),
                            spec_path=str(workdir / "spec.json"), module=runner_module("deployment"),
                            cards=cards, device=device,
                            env={"ZSCONF_SERVE_API_KEY": upstream_key(ctx.stack_dir)})
        )  # fmt: skip
        _crash_point("after_instance_start")
        run = ctx.store.update_run(run.run_id, status="running", pid=handle.pid, start_time=handle.start_time,
                                   host=os.uname().nodename, handle=handle.as_dict())  # fmt: skip
        assert run is not None
        _crash_point("after_instance_running")  # recorded as running, not routed yet
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
    _record(ctx, ch, status="running", outputs={"model_version": mv.version})
    _route(ctx, ch.address, serving, model_version=mv.version)
    for r in alive[spec.instances :]:
        _stop_instance(ctx, r)
    for r in old:
        _stop_instance(ctx, r)
    held = _gate_hold(ctx, tenant, spec.model, mv)
    if held:
        ctx.store.add_event("gate_held", held, ch.address)
    return f"{len(serving)} instance(s) of {spec.model} (v{mv.version})" + (f"; {held}" if held else "")


_READY_TIMEOUT_S = float(os.environ.get("ZSCONF_INSTANCE_READY_TIMEOUT", "600"))


def _wait_instance(ctx: _Ctx, run: RunRow) -> bool:
    from zsconf.executors import InstanceHandle

    return bool(ctx.executor.wait_healthy(InstanceHandle.from_dict(run.handle), timeout_s=_READY_TIMEOUT_S))


def _log_tail(workdir: str, lines: int = 3) -> str:
    try:
        text = (Path(workdir) / "runner.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "empty log"


def _service_group(ctx: _Ctx, ch: Change) -> str:
    _, tenant, name = _split(ch.address)
    assert tenant is not None
    if ch.action is Action.DELETE:
        ctx.store.revoke_api_keys(tenant, name)
        ctx.store.remove_resource(ch.address)
        return "destroyed (keys revoked)"
    if ch.action is Action.REPLACE:
        ctx.store.revoke_api_keys(tenant, name)
    spec = _spec(ctx, ch.address)
    active = [k for k in ctx.store.api_keys(tenant, name) if k.revoked_at is None]
    new = 0
    for _ in range(spec.keys - len(active)):
        create_key(ctx.store, tenant, name, ctx.stack_dir)  # kept until shown: never lost by a crash
        new += 1
    if len(active) > spec.keys:
        from zsconf.state.models import utcnow

        with ctx.store.session() as s:
            for k in active[spec.keys :]:
                k.revoked_at = utcnow()
                s.add(k)
            s.commit()
    keys = [
        {"id": k.id, "prefix": k.prefix} for k in ctx.store.api_keys(tenant, name) if k.revoked_at is None
    ]
    _record(ctx, ch, outputs={"keys": keys})
    _crash_point("after_key")
    return f"{len(keys)} key(s)" + (f", {new} new" if new else "")


_ACTIONS: dict[str, Callable[[_Ctx, Change], str]] = {
    "tenant": _tenant,
    "dataset": _dataset,
    "model": _model,
    "finetune": _job,
    "compression": _job,
    "evaluation": _job,
    "deployment": _deployment,
    "service_group": _service_group,
}
