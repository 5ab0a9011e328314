"""Compression runner: `python -m runners.compress SPEC.json` (spec: `schemas.run_compress.CompressRunSpec`).

Started as a process by the engine's executor. Quantizes `inputs.model_dir` with llm-compressor's
`oneshot` according to the Compression spec's strategy and writes a compressed-tensors model folder
to `output_dir`; result.json `outputs` carries sizes, perplexity before/after and the gate verdict.
Importing this package is light: torch and llm-compressor load only when a run starts.
"""

from __future__ import annotations

__all__: list[str] = []
