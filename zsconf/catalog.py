"""Load the catalog (`recipes/catalog/*.yaml`) once and answer the planner's questions.

Called by the graph (names, support checks), the planner (estimates), the engine (flavors, debug
bases) and `zsconf catalog`. Torch-free and light: yaml + pydantic only.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schemas.catalog import Catalog, Flavor, ModelEntry

__all__ = [
    "Catalog",
    "Flavor",
    "ModelEntry",
    "catalog_dir",
    "job_hours",
    "load_catalog",
    "recommended_instances",
    "supports_compression",
    "supports_finetune",
    "throughput",
]

_FILES = ("models.yaml", "flavors.yaml", "estimates.yaml")


def catalog_dir() -> Path:
    """The shipped catalog folder (recipes is package data)."""
    return Path(str(importlib.resources.files("recipes") / "catalog"))


def _read(path: Path) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)  # a safe loader (C or pure)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_catalog(extra_dirs: Iterable[str | Path] = ()) -> Catalog:
    """The shipped catalog, with models/flavors from `extra_dirs` (same file names) added or
    replacing entries of the same name, and their estimates keys overriding. Cached per argument."""
    return _load(tuple(str(d) for d in extra_dirs))


@functools.cache
def _load(extra_dirs: tuple[str, ...]) -> Catalog:
    models: dict[str, Any] = {}
    flavors: dict[str, Any] = {}
    estimates: dict[str, Any] = {}
    for folder in (catalog_dir(), *map(Path, extra_dirs)):
        for name in _FILES:
            path = folder / name
            if not path.is_file():
                continue
            data = _read(path)
            models.update(data.pop("models", None) or {})
            flavors.update(data.pop("flavors", None) or {})
            estimates.update(data)
    from pydantic import ValidationError

    try:
        return Catalog(models=models, flavors=flavors, estimates=estimates)
    except ValidationError as exc:
        raise ValueError(
            f"invalid catalog ({catalog_dir()}, {', '.join(extra_dirs) or 'no extra dirs'}): {exc}"
        ) from exc


def _entry(model: str | ModelEntry) -> ModelEntry:
    return model if isinstance(model, ModelEntry) else load_catalog().model(model)


def supports_finetune(model: str | ModelEntry, method: str) -> bool:
    """Table 6-1: does this base model (name or entry) allow `method`?"""
    return method in _entry(model).finetune


def supports_compression(model: str | ModelEntry, strategy: str) -> bool:
    """Table 7-2: see `schemas.catalog.compression_allowed` for the WxAxCx rule."""
    return load_catalog().supports_compression(_entry(model), strategy)


def throughput(model: str | ModelEntry, method: str) -> tuple[float, float]:
    """(lower, upper) tokens/s per card (table 6-6); KeyError when unsupported."""
    return load_catalog().throughput(model, method)


def job_hours(
    model: str | ModelEntry, method: str, iterations: int, cards: int = 1, nodes: int = 1
) -> tuple[float, float]:
    """(lower, upper) hours = coefficient × iterations ÷ (cards × nodes × throughput) + pre/post."""
    return load_catalog().job_hours(model, method, iterations, cards, nodes)


def recommended_instances(model: str | ModelEntry, qps: float, quantization: str | None = None) -> int:
    """ceil(qps ÷ recommended QPS per instance) (table 8-2)."""
    return load_catalog().recommended_instances(model, qps, quantization)
