"""Let llm-compressor 0.14.0.1's AWQ run on a machine without an accelerator.

Root cause (llmcompressor/modifiers/transform/awq/base.py, `_apply_smoothing`): before the grid
search of each mapping AWQ calls `IntermediatesCache.pin_memory(batch_index)` for every cached
batch, unconditionally. `Tensor.pin_memory()` raises "Cannot access accelerator device when none is
available" when torch has no accelerator. Pinning only speeds up host->device copies
(non_blocking onload); with no accelerator there is no such copy, so skipping it changes nothing
that is computed. Upstream fix: guard the call with `torch.accelerator.is_available()`, as
llmcompressor/datasets/utils.py already does for its DataLoader's `pin_memory`.

`no_pinning_without_accelerator()` applies exactly that guard, only while the block runs and only
when no accelerator exists; on GPU/NPU machines it does nothing. Used by `runners.compress.run`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_pinning_without_accelerator"]


@contextmanager
def no_pinning_without_accelerator() -> Iterator[bool]:
    """Yield whether the guard is active (True = CPU-only machine, pinning skipped)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield False
        return
    original = IntermediatesCache.pin_memory

    def _skip_pin(self: IntermediatesCache, batch_index: int, input_names: list[str] | None = None) -> None:
        return None  # nothing to pin for: tensors stay on the CPU they are computed on

    IntermediatesCache.pin_memory = _skip_pin  # type: ignore[method-assign]
    try:
        yield True
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]
