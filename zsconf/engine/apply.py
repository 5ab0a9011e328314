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

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas.common import parse_model_ref
from zsconf.engine.context import ApplyContext, split_address, sync_stack_gateway
from zsconf.engine.gateway import GATEWAY
from zsconf.engine.handlers import HANDLERS
from zsconf.engine.handlers.job import wait_run
from zsconf.engine.runs import finish_runs
from zsconf.errors import ExecutorError, PermanentError, PlanError
from zsconf.keys import NewKey, unshown_keys
from zsconf.names import JOB_KINDS
from zsconf.plans import Action, Change, Plan
from zsconf.state import Store

if TYPE_CHECKING:
    from schemas.catalog import Catalog
    from zsconf.executors import Executor
    from zsconf.graph import Graph
    from zsconf.loading import LoadedStack

__all__ = ["ActionOutcome", "ApplyResult", "apply_plan", "gating_evaluations"]


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


def apply_plan(
    plan: Plan,
    loaded: LoadedStack,
    graph: Graph,
    store: Store,
    *,
    parallelism: int = 4,
    wait: bool = False,
    catalog: Catalog | None = None,
    executor: Executor | None = None,
    on_event: Callable[[str, str, str], None] | None = None,
) -> ApplyResult:
    """Execute `plan` with `executor` (a `zsconf.executors.Executor`; default: the local one
    under `<stack>/.zsconf/executor`). `on_event(address, phase, message)` feeds a progress
    display."""
    if not plan.can_apply():
        raise PlanError("the plan has errors and cannot be applied:\n" + "\n".join(plan.errors))
    if executor is None:
        from zsconf.executors import executor_for

        executor = executor_for(plan.stack_dir, loaded.stack.platform)
    result = ApplyResult()
    ctx = ApplyContext(plan, loaded, graph, store, wait, catalog, executor)
    emit = on_event or (lambda a, p, m: None)
    ctx.emit = emit
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
            gw = sync_stack_gateway(ctx)
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
            key = (split_address(addr)[1] or "", parse_model_ref(ch.after["model"])[0])  # type: ignore[index]
            gated.setdefault(key, set()).add(addr)
    out: dict[str, set[str]] = {}
    for addr, ch in todo.items():
        if ch.kind == "deployment" and ch.action is not Action.DELETE and ch.after:
            evals = gated.get((split_address(addr)[1] or "", parse_model_ref(ch.after["model"])[0]))
            if evals:
                out[addr] = evals
    return out


def _run_one(ctx: ApplyContext, ch: Change) -> ActionOutcome:
    t0 = time.monotonic()
    try:
        if ch.action is not Action.DELETE:
            _await_running_inputs(ctx, ch)
        msg = HANDLERS[ch.kind](ctx, ch) or ""
        ok = True
    except Exception as exc:  # an action's failure is a diagnostic, never an abort
        ours = isinstance(exc, PlanError | ExecutorError | PermanentError)
        msg = str(exc) if ours else f"{type(exc).__name__}: {exc}"
        ctx.store.add_event("failed", msg, ch.address)
        return ActionOutcome(ch.address, ch.action, False, msg, time.monotonic() - t0,
                             permanent=isinstance(exc, PermanentError))  # fmt: skip
    return ActionOutcome(ch.address, ch.action, ok, msg, time.monotonic() - t0)


def _await_running_inputs(ctx: ApplyContext, ch: Change) -> None:
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
            wait_run(ctx, row.outputs["run_id"])
