"""Every dataset file of a stack read for real, and the checks that need its sample count.

Called by `zsconf.validate.validate_stack` (`zsconf validate`) and by the engine when it loads a
stack for a plan (`Engine.load`), so plan and apply refuse exactly what validate refuses: a missing
file, a directory, a bad line (with its line number and the platform's message), fewer samples
than `min_samples`, and `checkpoints` above the iterations a fine-tune will run when those are
derived from the sample count (the manual's 1-min(iterations, 10)). A file is read once per
(path, mtime, size, format): the daemon re-plans an unchanged stack for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.errors import Diagnostic

if TYPE_CHECKING:
    from zsconf.loading import LoadedStack

__all__ = ["MAX_ERRORS_PER_DATASET", "DatasetCheck", "check_datasets", "derived_iterations", "sample_count"]

# A broken 100k-line file would otherwise bury every other diagnostic.
MAX_ERRORS_PER_DATASET = 20


@dataclass
class DatasetCheck:
    name: str
    file: str
    format: str
    samples: int | None  # None when the file could not be read
    errors: int = 0
    tenant: str | None = None


@dataclass(frozen=True)
class _FileReport:
    """What the checks need of a read: the samples are not kept (a daemon holds this for good)."""

    count: int
    error_count: int
    errors: tuple[Any, ...]


# (path, format) -> ((mtime_ns, size), report or the error reading raised)
_REPORTS: dict[tuple[str, str], tuple[tuple[int, int], _FileReport | Exception]] = {}


def _report(path: Path, fmt: str) -> _FileReport | Exception:
    """The file read and checked by `schemas.samples.read_dataset`, or the OSError/ValueError it
    raised; cached until the file changes (mtime or size)."""
    from schemas.samples import read_dataset

    st = path.stat()
    key, ident = (str(path), fmt), (st.st_mtime_ns, st.st_size)  # absolute: under the stack dir
    cached = _REPORTS.get(key)
    if cached is not None and cached[0] == ident:
        return cached[1]
    result: _FileReport | Exception
    try:
        full = read_dataset(path, fmt)
        result = _FileReport(full.count, full.error_count, tuple(full.errors[:MAX_ERRORS_PER_DATASET]))
    except (OSError, ValueError) as exc:
        result = exc
    _REPORTS[key] = (ident, result)
    return result


def sample_count(path: Path, fmt: str) -> int | None:
    """Samples in a dataset file (None when it cannot be read): the plan's estimates."""
    try:
        report = _report(path, fmt)
    except OSError:
        return None
    return None if isinstance(report, Exception) else report.count


def derived_iterations(samples: int, global_batch_size: int, epochs: int) -> int:
    """Iterations of a fine-tune whose `iterations` is auto (the runner's rule)."""
    return math.ceil(samples / global_batch_size) * epochs


def check_datasets(
    loaded: LoadedStack, display_dir: Path | None = None
) -> tuple[list[DatasetCheck], list[Diagnostic]]:
    """(one check per dataset, every problem found). `display_dir` is how paths are shown (the
    stack directory as the user named it)."""
    shown_dir = display_dir if display_dir is not None else loaded.stack_dir
    checks: list[DatasetCheck] = []
    diagnostics: list[Diagnostic] = []
    for name, spec in loaded.stack.datasets.items():
        path = loaded.stack_dir / spec.path
        shown = str(shown_dir / spec.path)
        if not path.is_file():
            why = "is a directory, not a dataset file" if path.is_dir() else "dataset file not found"
            diagnostics.append(loaded.diagnostic(f"datasets.{name}.path", f"{why}: {shown}"))
            checks.append(DatasetCheck(name, shown, spec.format, None, tenant=spec.tenant))
            continue
        report = _report(path, spec.format)
        if isinstance(report, Exception):
            diagnostics.append(loaded.diagnostic(f"datasets.{name}.path", f"cannot read {shown}: {report}"))
            checks.append(DatasetCheck(name, shown, spec.format, None, tenant=spec.tenant))
            continue
        errors = report.errors
        for err in errors:
            where = f"datasets.{name}" + (f".{err.field}" if getattr(err, "field", None) else "")
            diagnostics.append(
                Diagnostic(
                    message=loaded.secrets.text(str(err.message)), path=where, file=shown, line=err.line
                )
            )
        if report.error_count > MAX_ERRORS_PER_DATASET:
            diagnostics.append(
                Diagnostic(
                    message=f"... and {report.error_count - MAX_ERRORS_PER_DATASET} more bad samples",
                    path=f"datasets.{name}",
                    file=shown,
                )
            )
        if not errors and report.count < spec.min_samples:
            diagnostics.append(
                loaded.diagnostic(
                    f"datasets.{name}.min_samples",
                    f"{shown} has {report.count} samples, fewer than min_samples={spec.min_samples}",
                )
            )
        checks.append(DatasetCheck(name, shown, spec.format, report.count, report.error_count, spec.tenant))
    diagnostics.extend(_checkpoints(loaded, checks))
    return checks, diagnostics


def _checkpoints(loaded: LoadedStack, checks: list[DatasetCheck]) -> list[Diagnostic]:
    """`checkpoints` <= min(iterations, 10) where iterations come from the train set's size."""
    counts = {(c.tenant, c.name): c.samples for c in checks if c.samples is not None}
    out: list[Diagnostic] = []
    for name, ft in loaded.stack.finetunes.items():
        hp = ft.hyperparameters
        n = counts.get((ft.tenant, ft.datasets.train))
        if hp.iterations != "auto" or n is None:
            continue  # explicit iterations are checked by the schema
        iterations = derived_iterations(n, hp.global_batch_size, hp.epochs)
        if hp.checkpoints > min(iterations, 10):
            out.append(
                loaded.diagnostic(
                    f"finetunes.{name}.hyperparameters.checkpoints",
                    f"checkpoints must be 1-min(iterations, 10) = 1-{min(iterations, 10)}: this job runs "
                    f"{iterations} iterations ({n} samples / global_batch_size {hp.global_batch_size}, "
                    f"rounded up, x {hp.epochs} epochs)",
                )
            )
    return out
