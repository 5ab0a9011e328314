"""The JSON spec of one training run (`python -m runners.train SPEC.json`).

Written by the engine (executor) and read by `runners/train/`. Follows the runner envelope of
CONTRACTS.md §2; `spec` is a `schemas.jobs.Finetune` dump.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.datasets import DatasetFormat
from schemas.jobs import Finetune

__all__ = ["TrainDataset", "TrainInputs", "TrainRunSpec"]


class TrainDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="absolute path of the dataset file")
    format: DatasetFormat


class TrainInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="absolute path of the base HuggingFace model folder")
    model_version: int | None = Field(
        default=None, ge=1, description="registry version of the input model (lineage)"
    )
    datasets: dict[Literal["train", "validation"], TrainDataset]


class TrainRunSpec(BaseModel):
    """Envelope of a training run."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    address: str = Field(description="e.g. finetune/acme/support-lora")
    workdir: str = Field(description="run directory: events/metrics/result, checkpoints/")
    output_dir: str = Field(description="where the trained model folder goes (created atomically)")
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    spec: Finetune
    inputs: TrainInputs
    resume: bool = False
