"""`validate_stack`: load, build the graph, and read every dataset file for real, collecting every
problem instead of stopping at the first.

Called by `zsconf validate` (CLI) and the daemon (before a reconcile pass); the plan/apply engine
calls `load_stack` and `build_graph` directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.datasets import DatasetCheck
from zsconf.datasets import check_datasets as read_datasets
from zsconf.errors import Diagnostic, StackError

if TYPE_CHECKING:
    from schemas.catalog import Catalog
    from zsconf.graph import Graph
    from zsconf.loading import LoadedStack

__all__ = ["ValidationResult", "validate_stack"]


@dataclass
class ValidationResult:
    """What `zsconf validate` reports. `ok` is False when any diagnostic was found."""

    stack_dir: Path
    diagnostics: list[Diagnostic] = field(default_factory=list)
    loaded: LoadedStack | None = None
    graph: Graph | None = None
    datasets: list[DatasetCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.diagnostics

    def counts(self) -> dict[str, int]:
        """Resources per stack key (tenants, datasets, ...), in kind order."""
        from schemas.stack import KINDS

        if self.loaded is None:
            return {}
        return {key: len(getattr(self.loaded.stack, key)) for key in KINDS}

    def as_dict(self) -> dict[str, Any]:
        """JSON for `zsconf validate --json`; secret values masked."""
        data = {
            "valid": self.ok,
            "stack_dir": str(self.stack_dir),
            "resources": self.counts(),
            "datasets": [
                {"name": d.name, "file": d.file, "format": d.format, "samples": d.samples, "errors": d.errors}
                for d in self.datasets
            ],
            "config_hash": self.loaded.config_hash if self.loaded else None,
            "errors": [d.as_dict() for d in self.diagnostics],
            "seconds": round(self.seconds, 3),
        }
        return self.loaded.secrets.data(data) if self.loaded else data


def validate_stack(
    stack_dir: Path | str,
    overrides: Sequence[str] = (),
    check_datasets: bool = True,
    catalog: Catalog | None = None,
) -> ValidationResult:
    """Everything `zsconf validate` checks; never raises for a problem in the stack."""
    from zsconf.graph import build_graph, stack_diagnostics
    from zsconf.loading import load_stack

    started = time.perf_counter()
    display_dir = Path(stack_dir)
    result = ValidationResult(stack_dir=display_dir)
    try:
        result.loaded = load_stack(display_dir, overrides)
    except StackError as exc:
        result.diagnostics.extend(stack_diagnostics(exc, catalog))
        result.seconds = time.perf_counter() - started
        return result
    try:
        result.graph = build_graph(result.loaded, catalog)
    except StackError as exc:
        result.diagnostics.extend(exc.diagnostics)
    if check_datasets:
        checks, problems = read_datasets(result.loaded, display_dir)
        result.datasets = checks
        result.diagnostics.extend(problems)
    result.seconds = time.perf_counter() - started
    return result
