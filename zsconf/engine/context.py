"""What the apply's handlers share: the context of one apply and the small steps every kind takes.

Used by the walk (`zsconf.engine.apply`), the per-kind handlers (`zsconf.engine.handlers`) and the
run bookkeeping (`zsconf.engine.runs`). Test hook: `crash_point`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.engine import gates
from zsconf.engine.gateway import GatewayInfo, sync_gateway
from zsconf.errors import ExecutorError
from zsconf.plans import Action, Change, Plan
from zsconf.state import ModelVersion, ResourceRow, Store

if TYPE_CHECKING:
    from zsconf.catalog import Catalog
    from zsconf.executors import Executor
    from zsconf.graph import Graph
    from zsconf.loading import LoadedStack


__all__ = [
    "ApplyContext",
    "crash_point",
    "desired_spec",
    "gate_hold",
    "new_row",
    "record",
    "resolve_model",
    "resolved_spec",
    "split_address",
    "sync_stack_gateway",
]


class ApplyContext:
    """One apply: the plan, the stack it was made from, the store, the executor, and what the
    handlers share while they run on the walk's thread pool (`lock`, `needed`)."""

    def __init__(
        self,
        plan: Plan,
        loaded: LoadedStack | None,
        graph: Graph | None,
        store: Store,
        wait: bool,
        catalog: Catalog | None,
        executor: Executor,
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
        self._locks: dict[str, threading.Lock] = {}
        # Progress of a long step inside a handler, as (address, phase, message): the CLI's live
        # table or its lines (set by the walk).
        self.emit: Callable[[str, str, str], None] = lambda address, phase, message: None
        # Jobs that another change of this plan depends on are followed to completion: their
        # model version is the dependent's input.
        self.needed = {d for c in plan.actionable() if c.action is not Action.DELETE for d in c.dependencies}

    def lock_for(self, address: str) -> threading.Lock:
        """One lock per resource, for handlers that act on a resource other than their own (an
        adapter deployment reloading its host's servers)."""
        with self.lock:
            return self._locks.setdefault(address, threading.Lock())


def crash_point(name: str) -> None:
    """Test-only: `ZSCONF_TEST_KILL_AT=<name>` kills this process with SIGKILL here, so the crash
    tests can stop apply at exact points between intent, side effect and result."""
    if os.environ.get("ZSCONF_TEST_KILL_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# -- helpers -----------------------------------------------------------------------------------
def new_row(
    ch: Change, status: str, outputs: dict[str, Any] | None = None, prev: ResourceRow | None = None
) -> ResourceRow:
    kind, tenant, name = split_address(ch.address)
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


def split_address(addr: str) -> tuple[str, str | None, str]:
    parts = addr.split("/")
    return (parts[0], None, parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def desired_spec(ctx: ApplyContext, addr: str) -> Any:
    return ctx.graph.nodes[addr]


def resolved_spec(ctx: ApplyContext, ch: Change) -> dict[str, Any]:
    """The spec as the runner needs it, secrets resolved (the plan and the state hold it masked):
    it goes only into the run's spec.json, mode 0600."""
    return ctx.graph.nodes[ch.address].model_dump(mode="json")


def record(
    ctx: ApplyContext, ch: Change, status: str = "applied", outputs: dict[str, Any] | None = None
) -> ResourceRow:
    prev = ctx.store.resource(ch.address)
    row = ctx.store.put_resource(new_row(ch, status, outputs, prev))
    ctx.store.add_event(ch.action.verb, f"{ch.address} {ch.action.verb}", ch.address)
    return row


def resolve_model(ctx: ApplyContext, tenant: str, ref: str) -> ModelVersion:
    """The version `ref` uses now: never one that failed a quality gate."""
    chosen, skipped = gates.resolve(ctx.store, tenant, ref)
    if chosen is None:
        held = gates.held_message(ctx.store, tenant, ref, chosen, skipped)
        raise ExecutorError(f"model {tenant}/{ref} has no usable version" + (f": {held}" if held else " yet"))
    return chosen


def gate_hold(ctx: ApplyContext, tenant: str, ref: str, chosen: ModelVersion) -> str:
    """Why a deployment serves `chosen` rather than a newer version ('' when it does not)."""
    _, skipped = gates.resolve(ctx.store, tenant, ref)
    return gates.held_message(ctx.store, tenant, ref, chosen, skipped)


def sync_stack_gateway(ctx: ApplyContext, wait_reload: bool = False) -> GatewayInfo | None:
    platform = ctx.loaded.stack.platform if ctx.loaded is not None else None
    with ctx.lock:  # one writer of the config per apply (actions run on a thread pool)
        return sync_gateway(ctx.store, ctx.executor, ctx.stack_dir, platform, wait_reload=wait_reload)
