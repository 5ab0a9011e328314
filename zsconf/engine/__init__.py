"""The plan/apply engine: what the CLI and the daemon call.

    from zsconf.engine import Engine
    eng = Engine(stack_dir)                      # opens the state store (ZSCONF_STATE_URL or SQLite)
    plan = eng.plan(overrides=[], targets=[], replace=[], destroy=False, refresh_only=False)
    if plan.can_apply() and plan.actionable():
        result = eng.apply(plan, parallelism=4, wait=False)  # takes the lock (lock_timeout=s)
    eng.finish_runs()                            # record jobs that ended (the daemon, each pass)
    eng.sync_gateway()                           # gateway config + process match the state
    eng.refresh()                                # Observed: drift + finished runs, read only
    eng.store.events(since_id=last_id)           # what happened (applied, run_succeeded, ...)

`result` is an `ApplyResult` (outcomes, diagnostics, secrets shown once, serial): a partial
apply is a result. Render with `zsconf.render.plan_text/plan_json/result_text`.

`Engine.load()` caches the loaded stack and graph keyed by the stack's files (path, mtime, size)
and the overrides, so the daemon re-planning an unchanged stack does not pay the load cost again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.engine.apply import ApplyResult, apply_plan
from zsconf.engine.plan import make_plan
from zsconf.engine.refresh import Observed, refresh
from zsconf.engine.runs import finish_runs
from zsconf.errors import StackError, StalePlanError
from zsconf.plans import Plan

if TYPE_CHECKING:
    from schemas.catalog import Catalog
    from zsconf.executors import Executor
    from zsconf.graph import Graph
    from zsconf.loading import LoadedStack

__all__ = ["ApplyResult", "Engine", "Observed", "apply_plan", "finish_runs", "make_plan", "refresh"]


def _fingerprint(stack_dir: Path, overrides: Sequence[str]) -> tuple[Any, ...]:
    """(path, mtime_ns, size) of every YAML file and dataset under the stack dir, plus overrides."""
    items = []
    for root, dirs, files in os.walk(stack_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            items.append((p, st.st_mtime_ns, st.st_size))
    items.sort()
    return (tuple(items), tuple(overrides), os.environ.get("ZSCONF_STATE_URL"))


class Engine:
    """One stack directory + its state store."""

    def __init__(
        self,
        stack_dir: str | Path,
        state_url: str | None = None,
        catalog: Catalog | None = None,
        executor: Executor | None = None,
        read_only: bool = False,
    ) -> None:
        """`read_only` (plan, status, show): create no state database where none exists yet."""
        from zsconf.state import open_store

        self.stack_dir = Path(stack_dir).resolve()
        self._catalog = catalog
        self._cache: tuple[tuple[Any, ...], LoadedStack, Graph, list[Any]] | None = None
        self.store = open_store(state_url, self.stack_dir, create=not read_only)
        self._executor = executor
        self._platform: Any = None  # the platform section of the last good load

    @property
    def executor(self) -> Executor:
        """The executor apply and refresh use: the one `platform.executor` names (local by
        default), its records under <stack>/.zsconf/executor or $ZSCONF_EXECUTOR_ROOT; created on
        first use."""
        if self._executor is None:
            from zsconf.errors import ZsconfError
            from zsconf.executors import executor_for

            if self._platform is None:
                with contextlib.suppress(ZsconfError):  # a stack that does not load: local
                    self.load(check_files=False)
            self._executor = executor_for(self.stack_dir, self._platform)
        return self._executor

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from zsconf.catalog import load_catalog

            self._catalog = load_catalog()
        return self._catalog

    def load(self, overrides: Sequence[str] = (), check_files: bool = True) -> tuple[LoadedStack, Graph]:
        """(LoadedStack, Graph), from cache when no file of the stack changed. Raises StackError
        with everything `zsconf validate` finds; `check_files=False` (destroy) leaves out the
        dataset files' problems, which must not stop tearing a stack down."""
        key = _fingerprint(self.stack_dir, overrides)
        if self._cache is not None and self._cache[0] == key:
            _, loaded, graph, problems = self._cache
            if problems and check_files:
                raise StackError(problems)
            return loaded, graph
        from zsconf.datasets import check_datasets
        from zsconf.graph import build_graph
        from zsconf.loading import load_stack

        try:
            loaded = load_stack(self.stack_dir, overrides)
        except StackError as exc:
            from zsconf.graph import stack_diagnostics

            raise StackError(stack_diagnostics(exc, self.catalog)) from None
        # Everything validate refuses, reported together: graph problems and every dataset's.
        problems = check_datasets(loaded)[1]
        try:
            graph = build_graph(loaded, self.catalog)
        except StackError as exc:
            raise StackError([*exc.diagnostics, *problems]) from None
        self._cache = (key, loaded, graph, problems)
        self._platform = loaded.stack.platform
        if problems and check_files:
            raise StackError(problems)
        return loaded, graph

    def plan(
        self,
        overrides: Sequence[str] = (),
        *,
        targets: Iterable[str] = (),
        replace: Iterable[str] = (),
        destroy: bool = False,
        refresh_only: bool = False,
    ) -> Plan:
        loaded, graph = self.load(overrides, check_files=not destroy)
        # An empty in-memory state (a read-only look at a stack never applied) has nothing to observe,
        # but a cluster's capacity is worth a look before the first apply.
        local = loaded.stack.platform.executor.kind == "local"
        executor = None if self.store.ephemeral and local else self.executor
        return make_plan(
            loaded, self.store, graph, catalog=self.catalog, targets=targets, replace=replace,
            destroy=destroy, refresh_only=refresh_only, overrides=overrides, executor=executor,
        )  # fmt: skip

    def check_fresh(self, plan: Plan) -> None:
        """Raise StalePlanError when a saved plan no longer matches the state or the stack."""
        empty_then_and_now = plan.state_lineage == "" and self.store.serial() == 0
        if plan.state_lineage != self.store.lineage() and not empty_then_and_now:
            raise StalePlanError("saved plan was made against another state database")
        if plan.state_serial != self.store.serial():
            raise StalePlanError(
                f"saved plan is stale: state serial is {self.store.serial()}, the plan was made at "
                f"{plan.state_serial}; run `zsconf plan` again"
            )
        loaded, _ = self.load(plan.overrides, check_files=not plan.destroy)
        if loaded.config_hash != plan.stack_hash:
            raise StalePlanError("saved plan is stale: the stack changed since; run `zsconf plan` again")

    def apply(
        self,
        plan: Plan,
        *,
        parallelism: int = 4,
        wait: bool = False,
        lock_timeout: float = 0.0,
        saved: bool = False,
        locked: bool = False,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> ApplyResult:
        """Take the lock (unless the caller holds it: `locked=True`), check a saved plan is
        fresh, apply."""
        op = "destroy" if plan.destroy else "apply"
        from contextlib import nullcontext

        with nullcontext() if locked else self.store.locked(op, lock_timeout):
            if saved:
                self.check_fresh(plan)
            loaded, graph = self.load(plan.overrides, check_files=not plan.destroy)
            if plan.refresh_only:
                finish_runs(self.store, self.executor)
                from zsconf.engine.apply import ApplyResult as _R

                return _R(serial=self.store.serial())
            return apply_plan(
                plan, loaded, graph, self.store, parallelism=parallelism, wait=wait,
                catalog=self.catalog, executor=self.executor, on_event=on_event,
            )  # fmt: skip

    def sync_gateway(self) -> Any:
        """Gateway config and process made to match the state (`GatewayInfo`, or None when the
        stack has no service group). The daemon calls it every pass: cheap when nothing changed,
        and it restarts a gateway that died. With a stack that does not load, the platform section
        of the last good load is used (never a default port the files did not ask for)."""
        from zsconf.engine.gateway import sync_gateway
        from zsconf.errors import ZsconfError

        try:
            loaded, _ = self.load()
            self._platform = loaded.stack.platform
        except ZsconfError:
            if getattr(self, "_platform", None) is None:
                return None
        return sync_gateway(self.store, self.executor, self.stack_dir, self._platform)

    def files_fingerprint(self) -> tuple[Any, ...]:
        """What the stack's files are now (paths, sizes, mtimes, and the overrides): a failure that
        retrying cannot fix is retried once this changes (the daemon's permanent holds)."""
        return _fingerprint(self.stack_dir, ())

    def desired_specs(self) -> dict[str, dict[str, Any]]:
        """address -> spec as the files say it, secrets resolved, for what uses them (webhooks);
        never stored or printed ({} when the stack does not load)."""
        from zsconf.engine.plan import desired_specs
        from zsconf.errors import ZsconfError

        try:
            loaded, graph = self.load()
        except ZsconfError:
            return {}
        return desired_specs(loaded, graph)

    def gateway_url(self) -> str | None:
        from zsconf.engine.gateway import gateway_url

        return gateway_url(self.executor)

    def refresh(self) -> Observed:
        """What the executor and the file system say now (drift, runs that ended); writes nothing."""
        return refresh(self.store, executor=self.executor)

    def finish_runs(self) -> list[str]:
        with self.store.locked("finish-runs", 30):
            return finish_runs(self.store, self.executor)

    def close(self) -> None:
        self.store.close()
