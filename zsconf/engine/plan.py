"""Make a plan: refresh, then diff the desired stack against state + observation.

Called by the CLI (`zsconf plan`, `apply`, `destroy`) and the daemon through `zsconf.engine`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.common import parse_model_ref
from schemas.stack import KINDS
from zsconf.datasets import sample_count
from zsconf.engine import gates
from zsconf.engine.diff import drop_paths, field_diffs
from zsconf.engine.estimates import estimate
from zsconf.engine.hashing import file_digest, lineage_hashes, secrets_digest
from zsconf.engine.refresh import Observed, refresh
from zsconf.names import JOB_KINDS, MAX_VERSIONS, VERSIONING_KINDS
from zsconf.plans import Action, Change, FieldDiff, Plan
from zsconf.state import Store

if TYPE_CHECKING:
    from schemas.catalog import Catalog
    from zsconf.executors import Executor
    from zsconf.graph import Graph
    from zsconf.loading import LoadedStack

__all__ = ["desired_specs", "make_plan"]


def _spec_cls(kind: str) -> Any:
    for singular, cls in KINDS.values():
        if singular == kind:
            return cls
    raise KeyError(kind)


def _replace_relevant(cls: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec whose change means a new thing (feeds the lineage hash)."""
    return {k: v for k, v in spec.items() if cls.forces_replace(k)}


def make_plan(
    loaded: LoadedStack,
    store: Store,
    graph: Graph,
    *,
    catalog: Catalog | None = None,
    targets: Iterable[str] = (),
    replace: Iterable[str] = (),
    destroy: bool = False,
    refresh_only: bool = False,
    overrides: Iterable[str] = (),
    observed: Observed | None = None,
    executor: Executor | None = None,
) -> Plan:
    mask = loaded.secrets
    secrets_key = store.secrets_key() if mask else ""
    serial = store.serial()
    state = store.resources()
    obs = observed if observed is not None else refresh(store, state, executor)
    plan = Plan(
        changes=[],
        state_serial=serial,
        state_lineage=store.lineage(),
        stack_hash=loaded.config_hash,
        stack_dir=str(loaded.stack_dir),
        overrides=list(overrides),
        drift=obs.drift,
        destroy=destroy,
        refresh_only=refresh_only,
    )
    if refresh_only:
        return plan

    order, desired, hashes, samples = _desired(loaded, graph)
    selected: set[str] | None = None
    targets = list(targets)
    if targets:
        selected = set()
        for t in targets:
            if t not in graph.nodes and t not in state:
                plan.errors.append(f"--target {t}: no such resource in the stack or the state")
                continue
            selected.add(t)
            if t in graph.nodes:
                selected |= graph.dependencies(t)
    forced = set(replace)
    for r in forced:
        if r not in graph.nodes:
            plan.errors.append(f"--replace {r}: no such resource in the stack")

    def want(addr: str) -> bool:
        return selected is None or addr in selected

    # Desired resources, in dependency order.
    if not destroy:
        for addr in order:
            if not want(addr):
                continue
            kind = addr.split("/", 1)[0]
            cls = type(graph.nodes[addr])
            # The state keeps specs with secrets masked (never stored) and a keyed digest of the
            # secret values: masked is compared with masked, digest with digest.
            after = desired[addr]
            shown = mask.data(after) if mask else after
            ignore = after.get("lifecycle", {}).get("ignore_changes", [])
            secret_leaves = mask.leaves(drop_paths(after, ignore)) if mask else []
            row = state.get(addr)
            ch = Change(
                address=addr,
                kind=kind,
                action=Action.NOOP,
                before=row.spec if row else None,
                after=shown,
                content_hash=hashes[addr],
                secrets_digest=secrets_digest(secret_leaves, secrets_key),
                dependencies=sorted(graph.edges.get(addr, ())),
            )
            if row is None or row.status == "pending":
                ch.action = Action.CREATE if row is None else Action.REPLACE
                if row is not None:
                    ch.reasons.append("a previous apply did not finish")
            else:
                diffs = (
                    []
                    if row.spec == shown  # the common case, compared in C
                    else field_diffs(drop_paths(row.spec, ignore), drop_paths(shown, ignore))
                )
                if not diffs and row.secrets_digest != ch.secrets_digest:
                    diffs = [(path, mask.text(v), mask.text(v)) for path, v in secret_leaves]
                    ch.reasons.append("a secret's value changed")
                for path, b, a in diffs:
                    top = path.split(".", 1)[0]
                    fr = cls.forces_replace(top)
                    ch.fields.append(FieldDiff(path, b, a, fr))
                    if fr:
                        ch.action = Action.REPLACE
                        ch.reasons.append(f"{path} forces replacement")
                if ch.action is Action.NOOP and diffs:
                    ch.action = Action.UPDATE
                if row.content_hash != hashes[addr] and not ch.action.is_replace:
                    why = _lineage_reason(addr, kind, graph, state, hashes)
                    if kind in JOB_KINDS or kind == "model":
                        ch.action = Action.REPLACE
                    elif ch.action is Action.NOOP:
                        ch.action = Action.UPDATE
                    ch.reasons.append(why)
                if addr in obs.broken and ch.action is Action.NOOP:
                    ch.action = (
                        Action.REPLACE if kind == "model" or kind in VERSIONING_KINDS else Action.UPDATE
                    )
                    ch.reasons.append(f"changed outside zsconf: {obs.broken[addr]}")
                if addr in forced:
                    ch.action = Action.REPLACE
                    ch.reasons.append("requested with --replace")
            if ch.action.is_replace and _prevent_destroy(row.spec if row else None):
                plan.errors.append(
                    f"{addr}: lifecycle.prevent_destroy is set and the plan would replace it "
                    f"({'; '.join(ch.reasons)})"
                )
            plan.changes.append(ch)

    # Resources in state but not desired (or everything under --destroy): delete, dependents first.
    gone = [a for a in state if (destroy or a not in graph.nodes) and want(a)]
    gone.sort(key=lambda a: _kind_rank(a), reverse=True)
    for addr in gone:
        row = state[addr]
        ch = Change(address=addr, kind=row.kind, action=Action.DELETE, before=row.spec,
                    dependencies=list(row.dependencies or []))  # fmt: skip
        ch.reasons.append("destroy requested" if destroy else "no longer in the stack")
        if _prevent_destroy(row.spec):
            plan.errors.append(f"{addr}: lifecycle.prevent_destroy is set and the plan would destroy it")
        plan.changes.append(ch)

    _gate_holds(plan, store, state)
    _check_versions(plan, store, graph)
    _estimates(plan, graph, samples, catalog)
    cluster = _cluster(plan, executor, loaded)
    _capacity(plan, state, graph, catalog, stack_tenants=loaded.stack.tenants, cluster=cluster)
    return plan


def _cluster(plan: Plan, executor: Any, loaded: LoadedStack) -> Any:
    """A cluster executor's capacity (None on the local one): what the plan's waits are judged
    against, shown as a line of the plan; a node that cannot see platform.storage is an error."""
    if executor is None or getattr(executor, "name", "local") == "local":
        return None
    from zsconf.errors import ExecutorError

    try:
        cap = executor.capacity()
        storage = (Path(loaded.stack_dir) / loaded.stack.platform.storage).resolve()  # as apply's
        # Before the first apply it may not exist yet: its nearest existing folder is what nodes share.
        seen = next(p for p in (storage, *storage.parents) if p.exists())
        unseen = executor.unseen_storage(seen)
    except ExecutorError as e:
        plan.errors.append(str(e))
        return None
    plan.capacity.append(cap.detail)
    if unseen:
        plan.errors.append(
            f"platform.storage {storage} is not visible on every node (mount it at the same path on "
            f"each): {'; '.join(unseen)}"
        )
    return cap


def _capacity(
    plan: Plan, rows: dict[str, Any], graph: Graph, catalog: Catalog | None, stack_tenants: dict[str, Any],
    cluster: Any = None,
) -> None:  # fmt: skip
    """Say which new jobs will queue, and behind what: a tenant's max_concurrent_jobs / max_cards,
    or the host's (or the cluster's) cards. Jobs already running come first, then this plan's
    jobs in order."""

    def cards_of(flavor: str, nodes: int) -> int:
        # A row applied under an older catalog may name a flavor this one lacks: it takes none.
        found = catalog.flavors.get(flavor) if catalog is not None else None
        return found.cards * nodes if found is not None else 0

    running: list[tuple[str, str | None, int]] = []  # (address, tenant, cards)
    for addr, row in rows.items():
        if row.kind in ("finetune", "compression", "evaluation") and row.status == "running":
            res = row.spec.get("resources", {})
            running.append((addr, row.tenant, cards_of(res.get("flavor", ""), res.get("nodes", 1))))
    from zsconf.executors import host_cards

    host = host_cards()  # None on a CPU-only host: cards are not counted there
    if cluster is not None:  # the cluster's cards of its accelerator kind, as free now plus running
        host = cluster.cards_total or None
    for ch in plan.changes:
        if ch.kind not in ("finetune", "compression", "evaluation") or ch.action not in (
            Action.CREATE,
            Action.REPLACE,
        ):
            continue
        spec = graph.nodes[ch.address]
        need = cards_of(spec.resources.flavor, spec.resources.nodes)
        if cluster is not None and spec.resources.nodes > cluster.nodes:
            plan.errors.append(
                f"{ch.address} needs {spec.resources.nodes} nodes (resources.nodes); the cluster has {cluster.nodes}"
            )
        tenant = stack_tenants.get(spec.tenant)
        # What this job consumes has finished before it starts: it cannot queue behind those.
        upstream = graph.dependencies(ch.address)
        mine = [r for r in running if r[1] == spec.tenant and r[0] != ch.address and r[0] not in upstream]
        why = None
        quotas = getattr(tenant, "quotas", None)
        if (
            quotas is not None
            and quotas.max_concurrent_jobs is not None
            and len(mine) >= quotas.max_concurrent_jobs
        ):
            why = f"tenant {spec.tenant} allows {quotas.max_concurrent_jobs} concurrent jobs"
        elif (
            quotas is not None
            and quotas.max_cards is not None
            and need
            and sum(r[2] for r in mine) + need > quotas.max_cards
        ):
            why = f"tenant {spec.tenant} may use {quotas.max_cards} cards and this job needs {need}"
        elif host is not None and need and sum(r[2] for r in running) + need > host:
            why = f"the {'cluster' if cluster is not None else 'host'} has {host} cards and this job needs {need}"
            mine = [r for r in running if r[2] and r[0] not in upstream]
        if why:
            behind = ", ".join(r[0] for r in mine) or "nothing"
            plan.capacity.append(f"{ch.address} will queue: {why}; behind {behind}")
            ch.estimate["queued_behind"] = [r[0] for r in mine]
        running.append((ch.address, spec.tenant, need))


def _desired(loaded: LoadedStack, graph: Graph) -> tuple[list[str], dict[str, Any], dict[str, str], dict]:
    """(order, spec dumps, lineage hashes, dataset sample counts) of the desired stack.

    Memoised on the graph object while the input files are unchanged: the engine caches the
    graph across plans of an unchanged stack (the daemon), so a re-plan skips dumping and hashing.
    """
    cache = graph.plan_cache
    order = cache.get("order") or graph.topological_order()
    inputs: dict[str, str] = {}
    datasets: list[tuple[str, Any, Path]] = []
    for addr in order:
        kind = addr.split("/", 1)[0]
        if kind == "dataset":
            spec = graph.nodes[addr]
            path = Path(loaded.stack_dir) / spec.path
            inputs[addr] = file_digest(path)
            datasets.append((addr, spec, path))
        elif kind == "model":
            spec = graph.nodes[addr]
            if spec.path:
                p = Path(spec.path)
                inputs[addr] = str(p if p.is_absolute() else Path(loaded.stack_dir) / p)
    memo = cache.get("desired")
    if memo is not None and memo[0] == inputs:
        return order, memo[1], memo[2], memo[3]
    desired: dict[str, dict[str, Any]] = {}
    relevant: dict[str, dict[str, Any]] = {}
    for addr in order:
        spec = graph.nodes[addr]
        dumped = spec.model_dump(mode="json")
        desired[addr] = dumped
        ignore = dumped.get("lifecycle", {}).get("ignore_changes", [])
        relevant[addr] = drop_paths(_replace_relevant(type(spec), dumped), ignore)
    hashes = lineage_hashes(order, relevant, graph.edges, inputs)
    counts: dict[str, int | None] = {}  # one count per file (many datasets may share one)
    samples: dict[tuple[str | None, str], int | None] = {}
    for addr, spec, path in datasets:
        key = f"{inputs[addr]}|{spec.format}"
        if key not in counts:
            counts[key] = sample_count(path, spec.format)
        samples[(spec.tenant, addr.rsplit("/", 1)[1])] = counts[key]
    cache["order"] = order
    cache["desired"] = (inputs, desired, hashes, samples)
    return order, desired, hashes, samples


def desired_specs(loaded: LoadedStack, graph: Graph) -> dict[str, dict[str, Any]]:
    """address -> spec as the files say it, secrets resolved (memoised with the plan's dumps)."""
    return _desired(loaded, graph)[1]


def _kind_rank(addr: str) -> int:
    ranks = {singular: i for i, (singular, _) in enumerate(KINDS.values())}
    return ranks.get(addr.split("/", 1)[0], 0)


def _prevent_destroy(spec: dict[str, Any] | None) -> bool:
    return bool(spec and spec.get("lifecycle", {}).get("prevent_destroy"))


def _lineage_reason(addr: str, kind: str, graph: Graph, state: dict, hashes: dict) -> str:
    if kind == "dataset":
        return "dataset file content changed"
    if kind == "model":
        return "imported model folder changed"
    changed = [
        d for d in sorted(graph.edges.get(addr, ()))
        if not d.startswith("tenant/") and (d not in state or state[d].content_hash != hashes.get(d))
    ]  # fmt: skip
    if changed:
        return "input changed: " + ", ".join(changed)
    return "content hash changed"


def _gate_holds(plan: Plan, store: Store, state: dict[str, Any]) -> None:
    """Deployments whose `@latest` skips versions that failed a quality gate: a warning saying
    so, and an update when the version served is not the one the reference now resolves to (a
    rollback after a late verdict, or a new version that passed)."""
    for ch in plan.changes:
        if ch.kind != "deployment" or ch.action is Action.DELETE or not ch.after:
            continue
        tenant = ch.address.split("/")[1]
        ref = ch.after["model"]
        chosen, skipped = gates.resolve(store, tenant, ref)
        held = gates.held_message(store, tenant, ref, chosen, skipped)
        if held:
            plan.warnings.append(f"{ch.address}: {held}")
        row = state.get(ch.address)
        serving = row.outputs.get("model_version") if row is not None else None
        if (
            ch.action is Action.NOOP and chosen is not None and serving not in (None, chosen.version)
            and row is not None and row.status == "running"
        ):  # fmt: skip
            ch.action = Action.UPDATE
            ch.reasons.append(f"serves v{serving}, {ref} now resolves to v{chosen.version}")


def _check_versions(plan: Plan, store: Store, graph: Graph) -> None:
    """At most MAX_VERSIONS versions per model: existing versions + the ones this plan adds."""
    adds: dict[tuple[str, str], list[str]] = {}
    for ch in plan.changes:
        if ch.kind in VERSIONING_KINDS and ch.action in (Action.CREATE, Action.REPLACE):
            spec = graph.nodes[ch.address]
            adds.setdefault((spec.tenant, spec.output.model), []).append(ch.address)
        elif ch.kind == "model" and ch.action is Action.CREATE:
            _, tenant, name = ch.address.split("/")
            adds.setdefault((tenant, name), []).append(ch.address)
    for (tenant, model), who in adds.items():
        have = len(store.model_versions(tenant, model))
        if have + len(who) > MAX_VERSIONS:
            plan.errors.append(
                f"model {tenant}/{model} has {have} versions and this plan adds {len(who)} "
                f"({', '.join(who)}): a model has at most {MAX_VERSIONS} versions; remove the model "
                "or old versions first"
            )


def _estimates(plan: Plan, graph: Graph, samples: dict, catalog: Catalog | None) -> None:
    one_off = [0.0, 0.0]
    per_hour = 0.0
    known = True
    for ch in plan.changes:
        if ch.action not in (Action.CREATE, Action.REPLACE, Action.UPDATE):
            continue
        if ch.kind not in ("finetune", "compression", "evaluation", "deployment"):
            continue
        spec = graph.nodes[ch.address]
        base = graph.bases.get(ch.address) if hasattr(graph, "bases") else None
        if base is None and ch.kind == "deployment":
            base = _deployment_base(graph, ch.address)
        tenant_samples = {name: n for (t, name), n in samples.items() if t == spec.tenant}
        est = estimate(ch.kind, spec, base, tenant_samples, catalog)
        if (
            ch.kind == "deployment"
            and spec.adapter_on is None
            and "engine" in est
            and _lora_output(graph, spec)
        ):
            est["engine"] += "; merged weights of a LoRA fine-tune (adapter_on serves the adapter instead)"
        ch.estimate = est
        if "warning" in est:
            plan.warnings.append(f"{ch.address}: {est['warning']}")
        if ch.kind == "deployment":
            if ch.action is not Action.UPDATE and "cost_per_hour" in est:
                per_hour += est["cost_per_hour"]
        elif ch.action is not Action.UPDATE:
            if "cost" in est:
                one_off[0] += est["cost"][0]
                one_off[1] += est["cost"][1]
            else:
                known = False
    plan.totals = {
        "added_cost_per_hour": round(per_hour, 2),
        "job_cost": [round(one_off[0], 2), round(one_off[1], 2)],
        "job_cost_complete": known,
        "currency": catalog.estimates.currency if catalog is not None else "CNY",
    }


def _lora_output(graph: Graph, spec: Any) -> bool:
    """Whether a deployment's model is made by a LoRA fine-tune."""
    creator = graph.model_creators.get((spec.tenant, parse_model_ref(spec.model)[0]))
    return (
        creator is not None and graph.kinds[creator] == "finetunes" and graph.nodes[creator].method == "lora"
    )


def _deployment_base(graph: Graph, addr: str) -> str | None:
    for dep in graph.edges.get(addr, ()):
        b = graph.bases.get(dep)
        if b:
            return b
    return None
