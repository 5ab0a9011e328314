"""Runs of jobs: their ids, the executor's request for an attempt, model versions, and finishing
runs that ended (status, the version they produced, gate verdicts).

Called by the job handler (first attempts), `zsconf.engine.jobs` (restarts, resumes), the walk and
the daemon (`finish_runs` each pass). One rule for every attempt: `job_request`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.common import parse_model_ref
from zsconf.engine import gates
from zsconf.engine.context import crash_point
from zsconf.engine.hashing import dir_digest
from zsconf.engine.refresh import read_result, refresh
from zsconf.names import VERSIONING_KINDS
from zsconf.registry import runner, runner_argv
from zsconf.state import ModelVersion, RunRow, Store

if TYPE_CHECKING:
    from zsconf.catalog import Catalog
    from zsconf.executors import Executor, JobRequest

__all__ = [
    "FINISH_LOCK", "finish_runs", "flavor_cards", "flavor_host", "job_request", "new_run_id", "next_version",
]  # fmt: skip


def new_run_id(addr: str, content_hash: str, suffix: str = "") -> str:
    """Derived, not random: a start retried after a crash finds its own intent row."""
    return "r-" + hashlib.sha256(f"{addr}|{content_hash}|{suffix}".encode()).hexdigest()[:12]


def flavor_cards(catalog: Catalog, flavor: str) -> tuple[int, str]:
    """(cards per node, device) of a catalog flavor; (0, "cpu") for a flavor the catalog lacks
    (a row applied under an older catalog: the graph refuses such names in the files)."""
    found = catalog.flavors.get(flavor)
    return (found.cards, found.device) if found is not None else (0, "cpu")


def flavor_host(catalog: Catalog, flavor: str) -> dict[str, Any]:
    """The CPUs and memory per node a flavor asks of a cluster executor ({} when unknown)."""
    found = catalog.flavors.get(flavor)
    return {"cpus": found.cpu, "memory_gb": found.memory_gb} if found is not None else {}


def job_request(
    catalog: Catalog, run_id: str, address: str, tenant: str, resources: dict[str, Any],
    spec_path: Path, workdir: Path, max_cards: int | None,
) -> JobRequest:  # fmt: skip
    """The executor's request for one attempt of a job: one rule for apply's first attempt and
    the supervisor's restarts (`zsconf.engine.jobs`)."""
    from zsconf.executors import JobRequest

    kind = address.split("/", 1)[0]
    flavor = resources.get("flavor") or "cpu.small"
    cards, device = flavor_cards(catalog, flavor)
    nodes, stage = int(resources.get("nodes") or 1), resources.get("deepspeed_stage")
    r = runner(kind)
    # This host is the only node the local executor has: all processes run here, one per card.
    argv = runner_argv(r, str(spec_path), processes=max(cards, 1) * nodes, deepspeed=stage is not None)
    return JobRequest(
        run_id=run_id, address=address, spec_path=str(spec_path), workdir=str(workdir), argv=argv,
        module=r.module, kind=kind, cards=cards, nodes=nodes,
        device=device, **flavor_host(catalog, flavor), priority=int(resources.get("priority") or 0), tenant=tenant,
        max_cards_for_tenant=max_cards, deepspeed_stage=stage,
    )  # fmt: skip


def next_version(store: Store, tenant: str, model: str) -> int:
    """The number the next version of a model gets."""
    have = store.model_versions(tenant, model)
    return (max(v.version for v in have) + 1) if have else 1


FINISH_LOCK = threading.Lock()  # finishing runs and restarting jobs: one thread at a time


def finish_runs(store: Store, executor: Executor) -> list[str]:
    """Record job runs that ended since last seen: status, and the model version they produced.
    Idempotent (a version is registered once per run). Called by apply and the daemon."""
    done: list[str] = []
    with FINISH_LOCK:  # parallel waits must not number two versions alike
        for run, obs in refresh(store, executor=executor).finished:
            _finish_one(store, run, obs)
            done.append(run.run_id)
    return done


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
    if status == "succeeded" and row is not None and row.kind in VERSIONING_KINDS:
        out = row.spec.get("output", {})
        model_dir = (res.get("outputs") or {}).get("model_dir") or run.output_dir
        existing = [
            v for v in store.model_versions(row.tenant, out.get("model")) if v.source_run == run.run_id
        ]
        if not existing:
            version = next_version(store, row.tenant or "", out.get("model"))
            quant = row.spec.get("strategy") if row.kind == "compression" else None
            store.add_model_version(
                ModelVersion(tenant=row.tenant or "", model=out.get("model"), version=version,
                             source_address=run.address, source_run=run.run_id,
                             content_hash=dir_digest(Path(model_dir)) if model_dir else "",
                             path=model_dir or "", quantization=quant, validated=True,
                             gate_status=_gate_status(res))
            )  # fmt: skip
            crash_point("after_version")
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
