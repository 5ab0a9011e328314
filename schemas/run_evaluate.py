"""The JSON spec of one evaluation run (`python -m runners.evaluate SPEC.json`).

Written by the engine (executor) and read by `runners/evaluate/__main__.py`. Follows the runner
envelope of CONTRACTS.md §2; `spec` is a `schemas.jobs.Evaluation` dump. An evaluation produces no
model, so `output_dir` is optional (unused).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.jobs import Evaluation
from schemas.run_compress import DatasetInput

__all__ = ["EvaluateInputs", "EvaluateRunSpec"]


class EvaluateInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="absolute path of the model version under test")
    model_version: int | None = Field(
        default=None, ge=1, description="registry version of the input model (lineage)"
    )
    # `eval` is required: the benchmark dataset (alpaca or sharegpt jsonl).
    datasets: dict[str, DatasetInput]


class EvaluateRunSpec(BaseModel):
    """Envelope of an evaluation run."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    address: str = Field(description="e.g. evaluation/acme/support-bench")
    workdir: str = Field(description="run directory: samples.jsonl, events.jsonl, result.json")
    output_dir: str | None = None
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    spec: Evaluation
    inputs: EvaluateInputs
    resume: bool = False
