"""The one place plans and apply results become text or JSON. Called by the CLI and the daemon.

JSON format (`zsconf plan --json`, `format_version` 1)::

    {"format_version": 1,
     "state_serial": 12, "state_lineage": "…", "stack_hash": "…", "stack_dir": "/abs",
     "overrides": [], "destroy": false, "refresh_only": false,
     "changes": [{"address": "finetune/acme/x", "kind": "finetune", "action": "-/+",
                  "before": {…spec…} | null, "after": {…spec…} | null,
                  "fields": [{"path": "hyperparameters.epochs", "before": 3, "after": 5,
                              "forces_replace": true}],
                  "reasons": ["hyperparameters.epochs forces replacement"],
                  "content_hash": "…", "dependencies": ["dataset/acme/faq", …],
                  "estimate": {"samples": 40, "iterations": 15, "duration_hours": [lo, hi],
                               "cost": [lo, hi], "flavor": "cpu.small", …}}],
     "drift": [{"address": "deployment/acme/chat", "message": "1 of 2 instances not running"}],
     "errors": [], "warnings": [], "capacity": [],
     "totals": {"added_cost_per_hour": 0.5, "job_cost": [lo, hi], "job_cost_complete": true,
                "currency": "CNY"},
     "summary": {"add": 3, "change": 1, "replace": 1, "destroy": 0}}

`action` is one of "+", "~", "-/+", "-", " " (no-op). A saved plan (`plan -o FILE`) is this same
document. Secret values are masked ("***") in `before`, `after` and `fields`.
"""

from __future__ import annotations

import json
from typing import Any

from zsconf.plans import Action, Plan

__all__ = ["plan_json", "plan_text", "result_text", "summary_line"]

_COLORS = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.REPLACE: "magenta", Action.DELETE: "red"}


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.as_dict(), indent=2, ensure_ascii=False, default=str)


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    return (
        f"Plan: {c['add']} to add, {c['change']} to change, {c['replace']} to replace, "
        f"{c['destroy']} to destroy."
    )


def _v(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def _flat(spec: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in spec.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.extend(_flat(v, path))
        else:
            out.append((path, v))
    return out


def _estimate_lines(est: dict[str, Any], currency: str) -> list[str]:
    lines = []
    if "iterations" in est:
        samples = est.get("samples")
        lines.append(
            f"iterations: {est['iterations']}" + (f" ({samples} samples)" if samples is not None else "")
        )
    if "duration_hours" in est:
        lo, hi = est["duration_hours"]
        lines.append(f"duration: {_hours(lo)} - {_hours(hi)} on {est.get('flavor')}")
    elif est.get("duration_note"):
        lines.append(est["duration_note"])
    if "cost" in est:
        lines.append(f"cost: {est['cost'][0]:.2f} - {est['cost'][1]:.2f} {currency}")
    if "engine" in est:
        lines.append(f"engine: {est['engine']}")
    if "instances_needed" in est:
        lines.append(
            f"instances for the QPS target: {est['instances_needed']} (configured {est['instances']})"
        )
    if "cost_per_hour" in est:
        lines.append(f"cost per hour: {est['cost_per_hour']:.2f} {currency}")
    if "seconds_per_image" in est:
        per_1000 = est.get("cost_per_1000_images")
        lines.append(
            f"per image (default size and steps): about {est['seconds_per_image']:g} s"
            + (f", {per_1000:.2f} {currency} per 1000 images" if per_1000 is not None else "")
        )
    return lines


def _hours(h: float) -> str:
    if h < 1:
        return f"{h * 60:.0f} min" if h * 60 >= 1 else f"{h * 3600:.0f} s"
    return f"{h:.1f} h"


def plan_text(plan: Plan, color: bool = False) -> str:
    """Human output: drift section, one block per change, errors/warnings, summary line."""

    def c(text: str, style: str) -> str:
        return f"[{style}]{text}[/{style}]" if color else text

    lines: list[str] = []
    if plan.drift:
        lines.append(c("Changed outside zsconf:", "bold"))
        for d in plan.drift:
            lines.append(f"  {d.address}: {d.message}")
        lines.append("")
    changes = plan.actionable()
    if not changes and not plan.errors:
        if plan.refresh_only:
            lines.append("Refresh only: no resource will change; drift above (if any) is recorded by apply.")
        elif any(d.apply_fixes for d in plan.drift):
            lines.append("No resource changes; apply repairs what is listed above.")
        else:
            lines.append("No changes. The platform matches the stack.")
    for ch in changes:
        sym = ch.action.value
        style = _COLORS.get(ch.action, "white")
        head = f"{sym} {ch.address}"
        lines.append(c(f"  # {ch.address} {ch.action.future}", "bold"))
        lines.append(c(f"  {head}", style))
        for r in ch.reasons:
            lines.append(f"      # {r}")
        if ch.action is Action.CREATE and ch.after:
            for path, v in _flat(ch.after):
                if v in (None, [], {}, ""):
                    continue
                lines.append(c(f"      + {path} = {_v(v)}", "green"))
        elif ch.action is Action.DELETE and ch.before:
            pass
        else:
            for f in ch.fields:
                mark = c(" # forces replacement", "magenta") if f.forces_replace else ""
                lines.append(c(f"      ~ {f.path}: {_v(f.before)} -> {_v(f.after)}", "yellow") + mark)
        for e in _estimate_lines(ch.estimate, plan.totals.get("currency", "CNY")):
            lines.append(c(f"      ≈ {e}", "cyan"))
        lines.append("")
    for w in plan.warnings:
        lines.append(c(f"Warning: {w}", "yellow"))
    for cap in plan.capacity:
        lines.append(f"Capacity: {cap}")
    t = plan.totals
    if t and (t.get("added_cost_per_hour") or t.get("job_cost", [0, 0])[1]):
        lo, hi = t["job_cost"]
        more = "" if t.get("job_cost_complete", True) else " (some jobs have no estimate)"
        cur = t.get("currency", "CNY")
        lines.append(
            f"Cost ({cur}): +{t['added_cost_per_hour']:.2f}/hour for services; jobs {lo:.2f} - {hi:.2f} one-off{more}"
        )
    for e in plan.errors:
        lines.append(c(f"Error: {e}", "red"))
    if not plan.refresh_only:
        lines.append(c(summary_line(plan), "bold"))
    return "\n".join(lines)


def new_keys_text(keys: list[Any]) -> list[str]:
    """Lines showing keys not shown before (`zsconf.keys.NewKey`), grouped by service group."""
    by_group: dict[str, list[str]] = {}
    for k in keys:
        by_group.setdefault(k.address, []).append(k.secret)
    lines = []
    for addr, secrets in by_group.items():
        lines.append(f"New API keys for {addr} (shown once, store them now):")
        lines.extend(f"  {s}" for s in secrets)
    return lines


def result_text(result: Any) -> str:
    """Final summary of an apply, with new API keys shown once."""
    c = result.counts()
    lines = []
    for d in result.diagnostics:
        lines.append(f"Error: {d}")
    lines.extend(new_keys_text(result.new_keys))
    if not result.outcomes and result.ok:  # nothing to do: the plan already said "No changes"
        if result.gateway_url:
            lines.append(f"Gateway: {result.gateway_url}")
        return "\n".join(lines)
    status = "Apply complete!" if result.ok else "Apply finished with errors."
    lines.append(
        f"{status} Resources: {c['added']} added, {c['changed']} changed, {c['replaced']} replaced, "
        f"{c['destroyed']} destroyed"
        + (f", {c['failed']} failed, {c['skipped']} skipped." if c["failed"] or c["skipped"] else ".")
    )
    if getattr(result, "gateway_url", None):
        lines.append(f"Gateway: {result.gateway_url} (OpenAI-compatible; call it with a service group's key)")
    return "\n".join(lines)
