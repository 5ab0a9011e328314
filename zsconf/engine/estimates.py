"""Estimates shown in the plan: job iterations/duration/cost, deployment instances for a QPS
target, plan totals. Called by `zsconf.engine.plan`; uses the catalog when it is installed and
says "unknown" otherwise (never guesses silently).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from schemas.catalog import parse_size

if TYPE_CHECKING:
    from schemas.catalog import Catalog, Flavor

__all__ = ["estimate"]


def _flavor(cat: Catalog | None, name: str) -> Flavor | None:
    """The flavor, or None without a catalog (the graph has refused names the catalog lacks)."""
    return cat.flavors.get(name) if cat is not None else None


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def estimate(
    kind: str,
    spec: Any,
    base: str | None,
    samples: dict[str, int | None],
    cat: Catalog | None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Estimate for one resource; `samples` = dataset name -> sample count; `quantization` = the
    deployed model's strategy (picks the catalog's quantized QPS figure)."""
    if kind == "finetune":
        return _finetune(spec, base, samples, cat)
    if kind in ("compression", "evaluation"):
        flavor = _flavor(cat, spec.resources.flavor)
        out: dict[str, Any] = {"flavor": spec.resources.flavor}
        entry = cat.models.get(base) if cat is not None and base else None
        minutes = (
            entry.compression_minutes.get(spec.strategy)
            if entry is not None and kind == "compression"
            else None
        )
        if minutes:
            lo, hi = minutes
            out["duration_hours"] = [lo / 60, hi / 60]
        price = _get(flavor, "price_per_hour")
        if price is not None and "duration_hours" in out:
            n = spec.resources.nodes
            out["cost"] = [round(h * price * n, 2) for h in out["duration_hours"]]
        return out
    if kind == "deployment":
        flavor = _flavor(cat, spec.flavor)
        if spec.adapter_on is not None:  # no servers of its own: the host's cost covers it
            return {"engine": f"vllm: LoRA adapter on the servers of deployment {spec.adapter_on!r}"}
        out = {"flavor": spec.flavor, "instances": spec.instances}
        entry = cat.models.get(base) if cat is not None and base else None
        if flavor is not None:
            from zsconf.serving import choose

            serving = choose(
                spec.engine, flavor.device, entry.task if entry is not None else "text-generation"
            )
            if not isinstance(serving, str):  # refusals are the graph's errors
                out["engine"] = serving.describe()
        price = _get(flavor, "price_per_hour")
        if price is not None:
            out["cost_per_hour"] = round(price * spec.instances, 2)
        if entry is not None and entry.images is not None:
            # One image at the default size and steps on one instance: the catalog's time per
            # 512x512 step, scaled by the pixels; its cost is that share of the flavor's hour.
            opts = entry.images
            height, width = parse_size(opts.default_size)
            seconds = opts.seconds_per_step * opts.default_steps * height * width / 512**2
            out["seconds_per_image"] = round(seconds, 3)
            if price is not None:
                out["cost_per_1000_images"] = round(price * seconds / 3600 * 1000, 2)
        if spec.qps and cat is not None and base in cat.models:
            need = cat.recommended_instances(base, spec.qps, quantization)
            out["instances_needed"] = need
            if spec.instances < need:
                out["warning"] = (
                    f"qps {spec.qps:g} needs {need} instances (catalog table 8-2 for {base}); "
                    f"{spec.instances} configured"
                )
        return out
    return {}


def _finetune(
    spec: Any, base: str | None, samples: dict[str, int | None], cat: Catalog | None
) -> dict[str, Any]:
    hp = spec.hyperparameters
    n = samples.get(spec.datasets.train)
    out: dict[str, Any] = {"flavor": spec.resources.flavor, "samples": n}
    if hp.iterations != "auto":
        out["iterations"] = hp.iterations
    elif n is not None:
        out["iterations"] = math.ceil(n / hp.global_batch_size) * hp.epochs
    flavor = _flavor(cat, spec.resources.flavor)
    if cat is not None and base in cat.models and "iterations" in out:
        try:
            # The catalog helper's formula (table 6-6): hours from iterations and throughput.
            hours = cat.job_hours(
                base=base,
                method=spec.method,
                iterations=out["iterations"],
                global_batch_size=hp.global_batch_size,
                sequence_length=hp.sequence_length,
                cards=max(_get(flavor, "cards", 1) or 1, 1),
                nodes=spec.resources.nodes,
            )
            if hours is not None:
                lo, hi = hours if isinstance(hours, list | tuple) else (hours, hours)
                out["duration_hours"] = [round(lo, 3), round(hi, 3)]
        except KeyError as exc:  # the catalog has no throughput for this method on this base
            out["duration_note"] = f"no duration estimate: {exc.args[0] if exc.args else exc}"
    price = _get(flavor, "price_per_hour")
    if price is not None and "duration_hours" in out:
        out["cost"] = [round(h * price * spec.resources.nodes, 2) for h in out["duration_hours"]]
    return out
