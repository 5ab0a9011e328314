"""The resource graph: references by name within a tenant resolved to addresses, checked against
the catalog and the tenants' quotas, in dependency order.

Called by `zsconf.validate` and the plan/apply engine (`build_graph(loaded, catalog)`; `--target`
uses `Graph.dependencies`). Built by an ordered list of small steps (`STEPS`) that each add nodes,
edges or diagnostics; the result is validated once at the end (cycles), and every problem found is
raised together as one StackError.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schemas.common import parse_model_ref
from schemas.stack import KINDS, address
from zsconf.errors import Diagnostic, StackError
from zsconf.names import MAX_VERSIONS, VERSIONING_KINDS

if TYPE_CHECKING:
    from schemas.catalog import Catalog
    from zsconf.loading import LoadedStack

__all__ = ["Graph", "build_graph", "stack_diagnostics"]

# Stack keys of the jobs that produce model versions ("finetunes", "compressions").
_JOB_KINDS = tuple(key for key, (singular, _) in KINDS.items() if singular in VERSIONING_KINDS)
# Formats each use accepts (REFERENCE.md "Datasets": MOSS, ShareGPT, CSV and XLSX are fine-tune only).
_FINETUNE_FORMATS = frozenset({"moss", "alpaca", "sharegpt", "csv", "xlsx"})
_EVAL_FORMATS = frozenset({"alpaca", "sharegpt"})
_CALIBRATION_FORMATS = frozenset({"alpaca", "sharegpt", "moss", "pretrain"})


@dataclass
class Graph:
    """Resources by address and their dependencies. `edges[a]` = the addresses `a` depends on."""

    nodes: dict[str, Any]
    edges: dict[str, set[str]]
    kinds: dict[str, str] = field(default_factory=dict)  # address -> stack key ("finetunes")
    # (tenant, model name) -> address of the resource that creates it (a models: entry or a job).
    model_creators: dict[tuple[str, str], str] = field(default_factory=dict)
    # (tenant, model name) -> jobs that add versions to it (output mode new_version).
    model_versioners: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # address of a model, job, evaluation or deployment -> catalog base model (None when unknown)
    bases: dict[str, str | None] = field(default_factory=dict)
    _reverse: dict[str, set[str]] | None = field(default=None, repr=False)
    # What the planner derives from this graph and its input files (order, spec dumps, lineage
    # hashes, sample counts), kept with it: the engine caches the graph of an unchanged stack.
    plan_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def reverse(self) -> dict[str, set[str]]:
        if self._reverse is None:
            rev: dict[str, set[str]] = {a: set() for a in self.nodes}
            for node, deps in self.edges.items():
                for dep in deps:
                    rev.setdefault(dep, set()).add(node)
            self._reverse = rev
        return self._reverse

    def topological_order(self) -> list[str]:
        """Every address after everything it depends on; ties broken by kind order, then address."""
        rank = {key: i for i, key in enumerate(KINDS)}
        indegree = {a: len(self.edges.get(a, ())) for a in self.nodes}
        ready = [(rank[self.kinds[a]], a) for a, n in indegree.items() if n == 0]
        heapq.heapify(ready)
        rev = self.reverse()
        out: list[str] = []
        while ready:
            _, node = heapq.heappop(ready)
            out.append(node)
            for user in rev.get(node, ()):
                indegree[user] -= 1
                if indegree[user] == 0:
                    heapq.heappush(ready, (rank[self.kinds[user]], user))
        if len(out) != len(self.nodes):
            raise ValueError("the graph has a cycle")  # build_graph refuses such graphs
        return out

    def _closure(self, start: str, step: dict[str, set[str]]) -> set[str]:
        if start not in self.nodes:
            raise KeyError(f"no resource {start!r} in the stack")
        seen: set[str] = set()
        todo = list(step.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(step.get(node, ()))
        return seen

    def dependencies(self, addr: str) -> set[str]:
        """Everything `addr` needs, transitively (what `plan --target addr` must include)."""
        return self._closure(addr, self.edges)

    def dependents(self, addr: str) -> set[str]:
        """Everything that needs `addr`, transitively."""
        return self._closure(addr, self.reverse())


@dataclass
class _Builder:
    loaded: LoadedStack
    catalog: Catalog | None
    graph: Graph
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # (kind key, name) -> address, for references by name
    by_name: dict[tuple[str, str], str] = field(default_factory=dict)

    def error(self, path: str, message: str) -> None:
        self.diagnostics.append(self.loaded.diagnostic(path, message))

    def edge(self, src: str, dst: str) -> None:
        self.graph.edges[src].add(dst)

    def items(self, *keys: str) -> Iterable[tuple[str, str, Any, str]]:
        """(kind key, name, spec, address) of the resources of these kinds."""
        for key in keys:
            singular = KINDS[key][0]
            for name, spec in getattr(self.loaded.stack, key).items():
                yield key, name, spec, address(singular, getattr(spec, "tenant", None), name)


# --- steps -------------------------------------------------------------------------------------


def add_nodes(b: _Builder) -> None:
    """One node per resource; every resource but a tenant depends on its tenant."""
    tenants = b.loaded.stack.tenants
    for key, name, spec, addr in b.items(*KINDS):
        b.graph.nodes[addr] = spec
        b.graph.kinds[addr] = key
        b.graph.edges[addr] = set()
        b.by_name[(key, name)] = addr
        if key == "tenants":
            continue
        if spec.tenant is None:
            b.error(
                f"{key}.{name}.tenant",
                "no tenant: set `tenant:` or platform.default_tenant (the stack has several tenants)",
            )
        elif spec.tenant not in tenants:
            b.error(
                f"{key}.{name}.tenant",
                f"{KINDS[key][0]} {name!r} belongs to tenant {spec.tenant!r}, which is not defined "
                f"under tenants: (defined: {', '.join(sorted(tenants)) or 'none'})",
            )
        else:
            b.edge(addr, f"tenant/{spec.tenant}")


def index_models(b: _Builder) -> None:
    """Who creates each model name (a models: entry or a job's new_model output), who adds
    versions; two creators of one model are an error."""
    creators = b.graph.model_creators
    for _, name, spec, addr in b.items("models"):
        creators[(spec.tenant, name)] = addr
    for key, name, spec, addr in b.items(*_JOB_KINDS):
        out = spec.output
        if out.mode != "new_model":
            continue
        other = creators.get((spec.tenant, out.model))
        if other is not None:
            hint = (
                " (use `mode: new_version` to add a version to it)"
                if b.graph.kinds[other] == "models"
                else ""
            )
            b.error(
                f"{key}.{name}.output.model",
                f"model {out.model!r} is already created by {other}; {addr} cannot create it too{hint}",
            )
            continue
        creators[(spec.tenant, out.model)] = addr
    for key, name, spec, addr in b.items(*_JOB_KINDS):
        out = spec.output
        if out.mode != "new_version":
            continue
        target = creators.get((spec.tenant, out.model))
        if target is None:
            b.error(
                f"{key}.{name}.output.model",
                f"{addr} adds a version to model {out.model!r}, which is neither under models: nor "
                f"a job's new_model output in tenant {spec.tenant!r}",
            )
            continue
        versioners = b.graph.model_versioners.setdefault((spec.tenant, out.model), [])
        versioners.append(addr)
        if target != addr:
            b.edge(addr, target)
        if len(versioners) + 1 > MAX_VERSIONS:
            b.error(
                f"{key}.{name}.output.model",
                f"model {out.model!r} would get more than {MAX_VERSIONS} versions "
                f"({len(versioners)} jobs add versions to it); a model has at most {MAX_VERSIONS}",
            )


def _other_tenants(b: _Builder, key: str, name: str, tenant: str) -> str | None:
    addr = b.by_name.get((key, name))
    if addr is None:
        return None
    owner = getattr(b.graph.nodes[addr], "tenant", None)
    return owner if owner != tenant else None


def _resolve(b: _Builder, src: str, path: str, key: str, name: str, tenant: str | None) -> str | None:
    """A reference by name to a resource of kind `key` in the same tenant -> its address."""
    if tenant is None:
        return None
    addr = b.by_name.get((key, name))
    singular = KINDS[key][0]
    if addr is None:
        if (key, name) not in b.loaded.invalid:  # defined, but its own schema errors are reported
            b.error(path, f"{src} refers to {singular} {name!r}, which is not defined under {key}:")
        return None
    owner = getattr(b.graph.nodes[addr], "tenant", None)
    if owner != tenant:
        b.error(
            path,
            f"cross-tenant reference: {src} (tenant {tenant!r}) refers to {addr} of tenant "
            f"{owner!r}; references stay within a tenant",
        )
        return None
    b.edge(src, addr)
    return addr


def _maybe_made_by_invalid(b: _Builder, model: str) -> bool:
    """A partial stack (resources with schema errors left out) may lack the model's creator: a
    models: entry of that name, or a job whose output cannot be read, left out."""
    invalid = b.loaded.invalid
    return ("models", model) in invalid or any(k in _JOB_KINDS for k, _ in invalid)


def _resolve_model(b: _Builder, src: str, path: str, ref: str, tenant: str | None) -> str | None:
    """`name@N|@latest` -> the address that creates the model (edge to it, and for consumers that
    do not produce versions themselves, to every job that adds versions)."""
    if tenant is None:
        return None
    name, _version = parse_model_ref(ref)
    creator = b.graph.model_creators.get((tenant, name))
    if creator is None and _maybe_made_by_invalid(b, name):
        return None
    if creator is None:
        elsewhere = sorted(t for (t, n) in b.graph.model_creators if n == name)
        if elsewhere:
            b.error(
                path,
                f"cross-tenant reference: {src} (tenant {tenant!r}) refers to model {name!r} of "
                f"tenant {elsewhere[0]!r}; references stay within a tenant",
            )
        else:
            b.error(
                path,
                f"{src} refers to model {name!r}, which is neither under models: nor a job's output "
                f"in tenant {tenant!r}",
            )
        return None
    if creator != src:
        b.edge(src, creator)
    if b.graph.kinds[src] not in _JOB_KINDS:
        for versioner in b.graph.model_versioners.get((tenant, name), ()):
            b.edge(src, versioner)
    return creator


def resolve_references(b: _Builder) -> None:
    """Dataset, model and service references by name -> edges; dangling or cross-tenant -> errors."""
    for key, name, spec, addr in b.items("finetunes"):
        _resolve_model(b, addr, f"{key}.{name}.model", spec.model, spec.tenant)
        _resolve(b, addr, f"{key}.{name}.datasets.train", "datasets", spec.datasets.train, spec.tenant)
        if spec.datasets.validation:
            _resolve(
                b,
                addr,
                f"{key}.{name}.datasets.validation",
                "datasets",
                spec.datasets.validation,
                spec.tenant,
            )
    for key, name, spec, addr in b.items("compressions"):
        _resolve_model(b, addr, f"{key}.{name}.model", spec.model, spec.tenant)
        if spec.calibration.dataset:
            _resolve(
                b,
                addr,
                f"{key}.{name}.calibration.dataset",
                "datasets",
                spec.calibration.dataset,
                spec.tenant,
            )
    for key, name, spec, addr in b.items("evaluations"):
        _resolve_model(b, addr, f"{key}.{name}.model", spec.model, spec.tenant)
        _resolve(b, addr, f"{key}.{name}.dataset", "datasets", spec.dataset, spec.tenant)
    for key, name, spec, addr in b.items("deployments"):
        creator = _resolve_model(b, addr, f"{key}.{name}.model", spec.model, spec.tenant)
        if spec.adapter_on is not None and spec.adapter_on != name:  # itself: check_adapters says so
            host = _resolve(b, addr, f"{key}.{name}.adapter_on", "deployments", spec.adapter_on, spec.tenant)
            if host is not None and creator is not None:
                b.edge(host, creator)  # the host's servers load the adapter this job makes
    for key, name, spec, addr in b.items("service_groups"):
        for index, service in enumerate(spec.services):
            _resolve(b, addr, f"{key}.{name}.services.{index}", "deployments", service, spec.tenant)
        for service in spec.rate_limits.per_model:
            if service not in spec.services:
                b.error(
                    f"{key}.{name}.rate_limits.per_model.{service}",
                    f"limits for {service!r}, which is not one of this group's services "
                    f"({', '.join(spec.services) or 'none'})",
                )


def _catalog_lookup(b: _Builder, what: str, name: str, path: str) -> Any:
    try:
        return getattr(b.catalog, what)(name)
    except KeyError as exc:
        message = exc.args[0] if exc.args else f"unknown {what} {name!r}"
        b.error(path, str(message))
        return None


def _base_of(b: _Builder, addr: str, seen: set[str] | None = None) -> str | None:
    """Catalog base of a model or of a job's output: the base of the job's input model."""
    bases = b.graph.bases
    if addr in bases:
        return bases[addr]
    seen = seen or set()
    if addr in seen:
        return None  # a cycle: reported by the final check
    seen.add(addr)
    spec = b.graph.nodes[addr]
    if b.graph.kinds[addr] == "models":
        base = spec.base
    else:
        name, _ = parse_model_ref(spec.model)
        creator = b.graph.model_creators.get((spec.tenant, name))
        base = _base_of(b, creator, seen) if creator else None
    bases[addr] = base
    return base


def _is_quantized(b: _Builder, tenant: str | None, ref: str) -> bool:
    name, _ = parse_model_ref(ref)
    creator = b.graph.model_creators.get((tenant, name))  # type: ignore[arg-type]
    if creator is None:
        return False
    kind = b.graph.kinds[creator]
    spec = b.graph.nodes[creator]
    return kind == "compressions" or (kind == "models" and spec.quantization != "none")


def _quantization_strategy(b: _Builder, tenant: str | None, ref: str) -> str | None:
    """The compression strategy behind model `ref` (None: not quantized, or not known here)."""
    name, _ = parse_model_ref(ref)
    creator = b.graph.model_creators.get((tenant, name))  # type: ignore[arg-type]
    if creator is None:
        return None
    spec = b.graph.nodes[creator]
    if b.graph.kinds[creator] == "compressions":
        return str(spec.strategy)
    return None


def _task(b: _Builder, addr: str) -> str:
    """What the catalog base behind `addr` does (text-generation when unknown)."""
    base = _base_of(b, addr)
    entry = b.catalog.models.get(base) if base and hasattr(b.catalog, "models") else None
    return entry.task if entry is not None else "text-generation"


def _check_serving(b: _Builder, key: str, name: str, spec: Any, addr: str, flavor_device: str) -> None:
    """The engine the deployment gets can be had here and serves its model on the device."""
    from zsconf.serving import choose, unsupported_quantization

    serving = choose(spec.engine, flavor_device, _task(b, addr))
    if isinstance(serving, str):
        b.error(f"{key}.{name}.engine", serving)
        return
    refused = unsupported_quantization(serving, _quantization_strategy(b, spec.tenant, spec.model))
    if refused:
        b.error(f"{key}.{name}.model", f"{spec.model}: {refused}")


# LoRA target modules vLLM serves adapters for (it refuses lm_head and embedding adapters at load).
VLLM_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


def check_adapters(b: _Builder) -> None:
    """`adapter_on`: the model is a LoRA fine-tune's output whose targets vLLM can serve, and the
    host is a vLLM deployment of that fine-tune's input model that is not an adapter itself."""
    from zsconf.serving import choose

    for key, name, spec, addr in b.items("deployments"):
        if spec.adapter_on is None:
            continue
        path = f"{key}.{name}.adapter_on"
        host_addr = b.by_name.get(("deployments", spec.adapter_on))
        if host_addr is None or b.graph.nodes[host_addr].tenant != spec.tenant:
            continue  # resolve_references reported it
        host = b.graph.nodes[host_addr]
        if host_addr == addr or host.adapter_on is not None:
            b.error(
                path,
                f"{spec.adapter_on!r} must serve a base model; it is {'this deployment' if host_addr == addr else 'an adapter deployment itself'}",
            )
            continue
        model_name, _ = parse_model_ref(spec.model)
        creator = b.graph.model_creators.get((spec.tenant, model_name))  # type: ignore[arg-type]
        job = b.graph.nodes.get(creator) if creator else None
        if creator is None or b.graph.kinds[creator] != "finetunes" or job.method != "lora":
            b.error(
                path,
                f"{spec.model} is not the output of a LoRA fine-tune: only LoRA adapters are served on another deployment's servers",
            )
            continue
        job_name = creator.rsplit("/", 1)[-1]
        wrong = sorted(set(job.hyperparameters.lora_targets) - VLLM_LORA_TARGETS)
        if wrong:
            b.error(
                f"finetunes.{job_name}.hyperparameters.lora_targets",
                f"vLLM serves adapters on {', '.join(sorted(VLLM_LORA_TARGETS))} only; {', '.join(wrong)} "
                f"cannot be served as an adapter (deployments.{name}.adapter_on): serve merged weights "
                "(remove adapter_on) or train without them",
            )
        if parse_model_ref(host.model)[0] != parse_model_ref(job.model)[0]:
            b.error(path, f"{spec.adapter_on!r} serves {host.model}; the adapter was trained on {job.model}")
        flavor = b.catalog.flavors.get(host.flavor) if b.catalog is not None else None
        serving = choose(host.engine, flavor.device) if flavor is not None else None
        if serving is not None and not isinstance(serving, str) and serving.engine != "vllm":
            b.error(
                path, f"{spec.adapter_on!r} runs the {serving.engine} engine; adapters are served by vLLM"
            )


def compute_bases(b: _Builder) -> None:
    """The catalog base model behind every model, job, evaluation and deployment."""
    for _, _, _, addr in b.items("models", *_JOB_KINDS, "evaluations", "deployments"):
        _base_of(b, addr)


def check_catalog(b: _Builder) -> None:
    """Base models and flavors exist; the method or strategy is supported for the base model
    (tables 6-1 and 7-2); quantized models are for deployment only; a new version keeps the base."""
    from zsconf import catalog as cat

    for key, name, spec, _addr in b.items("models"):
        _catalog_lookup(b, "model", spec.base, f"{key}.{name}.base")
    for key, name, spec, _addr in b.items("finetunes", "compressions", "evaluations"):
        _catalog_lookup(b, "flavor", spec.resources.flavor, f"{key}.{name}.resources.flavor")
    for key, name, spec, addr in b.items("deployments"):
        flavor = _catalog_lookup(b, "flavor", spec.flavor, f"{key}.{name}.flavor")
        if flavor is not None:
            _check_serving(b, key, name, spec, addr, flavor.device)
    for key, name, spec, addr in b.items("evaluations"):
        if _task(b, addr) == "text-to-image":
            b.error(
                f"{key}.{name}.model",
                f"{spec.model} is a text-to-image model: evaluations score text models only",
            )

    known = set(b.catalog.models) if hasattr(b.catalog, "models") else None
    for key, name, spec, addr in b.items(*_JOB_KINDS):
        base = _base_of(b, addr)
        if base is None or (known is not None and base not in known):
            continue
        model = b.catalog.model(base)
        if key == "finetunes":
            if not cat.supports_finetune(model, spec.method):
                b.error(
                    f"{key}.{name}.method",
                    f"base model {base} does not support {spec.method} fine-tuning (studio manual table 6-1)",
                )
            formats = model.dataset_formats
            train = b.loaded.stack.datasets.get(spec.datasets.train)
            if formats and train is not None and train.format != "pretrain" and train.format not in formats:
                b.error(
                    f"{key}.{name}.datasets.train",
                    f"base model {base} takes datasets in {', '.join(formats)}; "
                    f"{spec.datasets.train!r} is {train.format} (studio manual table 6-2)",
                )
        elif not cat.supports_compression(model, spec.strategy):
            b.error(
                f"{key}.{name}.strategy",
                f"base model {base} does not support compression strategy {spec.strategy} "
                "(studio manual table 7-2)",
            )
        if _is_quantized(b, spec.tenant, spec.model):
            b.error(
                f"{key}.{name}.model",
                f"{spec.model} is a quantized model: quantized models can only be deployed or evaluated",
            )
        if spec.output.mode == "new_version":
            target = b.graph.model_creators.get((spec.tenant, spec.output.model))
            target_base = _base_of(b, target) if target else None
            if target_base is not None and target_base != base:
                b.error(
                    f"{key}.{name}.output.model",
                    f"a new version of {spec.output.model!r} must have its base ({target_base}); "
                    f"this job's input is based on {base}",
                )


def check_dataset_formats(b: _Builder) -> None:
    """Each use of a dataset needs a format the use accepts."""
    datasets = b.loaded.stack.datasets

    def check(path: str, ref: str | None, allowed: frozenset[str], use: str) -> None:
        dataset = datasets.get(ref) if ref else None
        if dataset is not None and dataset.format not in allowed:
            b.error(
                path,
                f"dataset {ref!r} has format {dataset.format}; {use} needs {' or '.join(sorted(allowed))}",
            )

    for key, name, spec, _ in b.items("finetunes"):
        for role in ("train", "validation"):
            ref = getattr(spec.datasets, role)
            dataset = datasets.get(ref) if ref else None
            if role == "train" and dataset is not None and dataset.usage == "evaluation":
                b.error(
                    f"{key}.{name}.datasets.train",
                    f"dataset {ref!r} is marked `usage: evaluation` (held out for scoring); "
                    "training on it would make its evaluations meaningless",
                )
        allowed = frozenset({"pretrain"}) if spec.method == "continued_pretrain" else _FINETUNE_FORMATS
        use = (
            "continued pre-training" if spec.method == "continued_pretrain" else f"{spec.method} fine-tuning"
        )
        check(f"{key}.{name}.datasets.train", spec.datasets.train, allowed, use)
        check(f"{key}.{name}.datasets.validation", spec.datasets.validation, allowed, use)
    for key, name, spec, _ in b.items("compressions"):
        check(
            f"{key}.{name}.calibration.dataset", spec.calibration.dataset, _CALIBRATION_FORMATS, "calibration"
        )
    for key, name, spec, _ in b.items("evaluations"):
        check(f"{key}.{name}.dataset", spec.dataset, _EVAL_FORMATS, "evaluation")


def check_quotas(b: _Builder) -> None:
    """Static quota checks: a job that can never fit its tenant's cards or cores, a queue the
    tenant lacks, more deployments (or their cards) than the tenant may hold."""
    tenants = b.loaded.stack.tenants
    flavors: dict[str, Any] = {}

    def flavor(name: str) -> Any:
        if name not in flavors:
            try:
                flavors[name] = b.catalog.flavor(name)
            except KeyError:
                flavors[name] = None  # reported by check_catalog
        return flavors[name]

    for key, name, spec, _ in b.items(*_JOB_KINDS, "evaluations"):
        tenant = tenants.get(spec.tenant or "")
        if tenant is None:
            continue
        res = spec.resources
        if tenant.quotas.max_concurrent_jobs == 0:
            b.error(
                f"{key}.{name}",
                f"tenant {spec.tenant!r} may run no jobs (quotas.max_concurrent_jobs: 0)",
            )
        if res.queue not in tenant.queues:
            b.error(
                f"{key}.{name}.resources.queue",
                f"tenant {spec.tenant!r} has no queue {res.queue!r} (queues: {', '.join(tenant.queues)})",
            )
        fl = flavor(res.flavor)
        if fl is None:
            continue
        cards = fl.cards * res.nodes
        quota = tenant.quotas
        if quota.max_cards is not None and cards > quota.max_cards:
            b.error(
                f"{key}.{name}.resources",
                f"needs {cards} cards ({res.flavor} x {res.nodes} nodes) but tenant {spec.tenant!r} "
                f"may use at most {quota.max_cards} (quotas.max_cards)",
            )
        cores = fl.cpu * res.nodes
        if quota.max_cpu_cores is not None and cores > quota.max_cpu_cores:
            b.error(
                f"{key}.{name}.resources",
                f"needs {cores} CPU cores ({res.flavor} x {res.nodes} nodes) but tenant "
                f"{spec.tenant!r} may use at most {quota.max_cpu_cores} (quotas.max_cpu_cores)",
            )

    per_tenant: dict[str, list[tuple[str, Any]]] = {}
    for _, name, spec, _ in b.items("deployments"):
        if spec.tenant in tenants:
            per_tenant.setdefault(spec.tenant, []).append((name, spec))
    for tenant_name, deployments in per_tenant.items():
        quota = tenants[tenant_name].quotas
        if quota.max_deployments is not None and len(deployments) > quota.max_deployments:
            b.error(
                f"tenants.{tenant_name}.quotas.max_deployments",
                f"tenant {tenant_name!r} has {len(deployments)} deployments, more than its quota "
                f"of {quota.max_deployments}",
            )
        if quota.max_cards is not None:
            # Running deployments hold their cards all the time.
            cards = 0
            for _, spec in deployments:
                fl = flavor(spec.flavor)
                if fl is not None and spec.state == "running":
                    cards += fl.cards * spec.instances
            if cards > quota.max_cards:
                b.error(
                    f"tenants.{tenant_name}.quotas.max_cards",
                    f"tenant {tenant_name!r}'s running deployments hold {cards} cards, more than its "
                    f"quota of {quota.max_cards}",
                )


def _peel_sinks(graph: Graph, left: set[str]) -> None:
    """Drop from `left`, repeatedly, every node with no dependency left: what stays can reach
    a cycle, so walking dependencies from any of them finds one."""
    rev = graph.reverse()
    outdeg = {a: sum(1 for d in graph.edges[a] if d in left) for a in left}
    ready = [a for a, n in outdeg.items() if n == 0]
    while ready:
        node = ready.pop()
        left.discard(node)
        for user in rev.get(node, ()):
            if user in left:
                outdeg[user] -= 1
                if outdeg[user] == 0:
                    ready.append(user)


def check_cycles(b: _Builder) -> None:
    """Final validation: the references form a DAG; each cycle is named in full."""
    graph = b.graph
    left = set(graph.nodes)
    _peel_sinks(graph, left)
    while left:
        path: list[str] = []
        index: dict[str, int] = {}
        node = min(left)
        while node not in index:
            index[node] = len(path)
            path.append(node)
            node = min(d for d in graph.edges[node] if d in left)
        cycle = [*path[index[node] :], node]
        first = cycle[0]
        b.error(
            f"{graph.kinds[first]}.{first.rsplit('/', 1)[1]}.model",
            "reference cycle: " + " -> ".join(cycle),
        )
        left.difference_update(cycle)
        _peel_sinks(graph, left)


STEPS: tuple[Callable[[_Builder], None], ...] = (
    add_nodes,
    index_models,
    resolve_references,
    compute_bases,
    check_catalog,
    check_adapters,
    check_dataset_formats,
    check_quotas,
    check_cycles,
)


def stack_diagnostics(error: StackError, catalog: Catalog | None = None) -> list[Diagnostic]:
    """Every problem of a stack that failed its schema: the schema errors, plus the reference
    errors of the rest of it (`error.partial`: the stack without the invalid resources), so one
    run reports both. Called by `zsconf validate` and the engine."""
    found = list(error.diagnostics)
    if error.partial is not None:
        try:
            build_graph(error.partial, catalog)  # type: ignore[arg-type]
        except StackError as more:
            found += more.diagnostics
    return found


def build_graph(loaded: LoadedStack, catalog: Catalog | None = None) -> Graph:
    """Resolve every reference of `loaded`; raises StackError with every problem found.
    `catalog` defaults to `zsconf.catalog.load_catalog()`."""
    if catalog is None:
        from zsconf.catalog import load_catalog

        catalog = load_catalog()
    from zsconf.loading.stack import paused_gc

    builder = _Builder(loaded, catalog, Graph(nodes={}, edges={}))
    with paused_gc():
        for step in STEPS:
            step(builder)
    if builder.diagnostics:
        raise StackError(builder.diagnostics)
    return builder.graph
