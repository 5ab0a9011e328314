"""Evaluation runner: `python -m runners.evaluate SPEC.json` (spec: `schemas.run_evaluate.EvaluateRunSpec`).

Started as a process by the engine's executor. Generates answers for a benchmark dataset with the
model under test, scores them (`runners.evaluate.metrics`), writes `samples.jsonl` and result.json
with the mean metrics and the gate verdict. Importing this package is light.
"""

from __future__ import annotations

__all__: list[str] = []
