"""Quality gates: which model version a `NAME@latest` reference may use.

A compression's gate (`max_perplexity_increase`) judges the version it produces; an evaluation's
gate (`min_rouge_l`, ...) judges the version it evaluated. A version that failed a gate is never
resolved by `@latest`, so a deployment following it stays on (or rolls back to) the newest version
that did not fail, and the plan and the events say why. Called by `zsconf.engine.apply` (when a
run finishes, and when a deployment resolves its model) and `zsconf.engine.plan` (warnings).
"""

from __future__ import annotations

from typing import Any

from schemas.common import parse_model_ref
from zsconf.state import Event, ModelVersion, Store

__all__ = ["gate_reason", "gate_summary", "held_message", "mark_failed", "resolve"]


def gate_summary(outputs: dict[str, Any]) -> str:
    """One line from a runner's result `outputs`: the failed thresholds (evaluation) or the
    perplexity change against its limit (compression)."""
    gate = outputs.get("gate") or {}
    if gate.get("failures"):
        return "; ".join(str(f) for f in gate["failures"])
    limit, inc = gate.get("max_perplexity_increase"), outputs.get("perplexity_increase")
    if limit is not None and inc is not None:
        return f"perplexity {float(inc):+.2%}, limit {float(limit):.2%}"
    return "gate not passed"


def mark_failed(store: Store, tenant: str, model: str, version: int, reason: str, address: str) -> None:
    """Record that `tenant/model vN` failed a gate (idempotent) and say so in an event."""
    with store.session() as s:
        from sqlmodel import select

        mv = s.exec(
            select(ModelVersion).where(
                ModelVersion.tenant == tenant, ModelVersion.model == model, ModelVersion.version == version
            )
        ).first()
        if mv is None:
            return
        if mv.gate_status != "failed":
            mv.gate_status = "failed"
            s.add(mv)
            s.commit()
    if _failure_event(store, tenant, model, version) is not None:
        return  # recorded already (finish_runs is idempotent)
    store.add_event(
        "gate_failed", f"{tenant}/{model} v{version} failed its quality gate: {reason}", address,
        tenant=tenant, model=model, version=version, reason=reason,
    )  # fmt: skip


def _failure_event(store: Store, tenant: str, model: str, version: int) -> Event | None:
    from sqlmodel import col, select

    with store.session() as s:
        for ev in s.exec(select(Event).where(Event.event == "gate_failed").order_by(col(Event.id).desc())):
            d = ev.data or {}
            if d.get("tenant") == tenant and d.get("model") == model and d.get("version") == version:
                return ev
    return None


def gate_reason(store: Store, tenant: str, model: str, version: int) -> str:
    """Why `tenant/model vN` failed its gate (from its `gate_failed` event)."""
    ev = _failure_event(store, tenant, model, version)
    return str((ev.data or {}).get("reason") or "") if ev is not None else ""


def resolve(store: Store, tenant: str, ref: str) -> tuple[ModelVersion | None, list[ModelVersion]]:
    """(the version `ref` uses, newer versions skipped because they failed a gate). An explicit
    `NAME@N` is honoured only when vN did not fail."""
    name, version = parse_model_ref(ref)
    versions = store.model_versions(tenant, name)
    if version is not None:
        versions = [v for v in versions if v.version == version]
    usable = [v for v in versions if v.gate_status != "failed"]
    chosen = usable[-1] if usable else None
    skipped = [
        v for v in versions if v.gate_status == "failed" and (chosen is None or v.version > chosen.version)
    ]
    return chosen, skipped


def held_message(
    store: Store, tenant: str, ref: str, chosen: ModelVersion | None, skipped: list[ModelVersion]
) -> str:
    """'faq-bot v2 failed its quality gate (rouge_l 0.21 < 0.30); stays on v1', or ''."""
    if not skipped:
        return ""
    name, _ = parse_model_ref(ref)
    parts = []
    for v in skipped:
        why = gate_reason(store, tenant, name, v.version)
        parts.append(f"v{v.version}" + (f" ({why})" if why else ""))
    where = f"stays on v{chosen.version}" if chosen else "no version passed, nothing to serve"
    return f"{name} {', '.join(parts)} failed its quality gate; {where}"
