"""The JSON spec of one compression run (`python -m runners.compress SPEC.json`).

Written by the engine (executor) and read by `runners/compress/__main__.py`. Follows the runner
envelope of CONTRACTS.md §2; `spec` is a `schemas.jobs.Compression` dump.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.datasets import DatasetFormat
from schemas.jobs import Compression

__all__ = ["CompressInputs", "CompressRunSpec", "DatasetInput"]


class DatasetInput(BaseModel):
    """One dataset file handed to a runner: an absolute path and its format."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="absolute path of the dataset file")
    format: DatasetFormat


class CompressInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="absolute path of the input HuggingFace model folder")
    model_version: int | None = Field(
        default=None, ge=1, description="registry version of the input model (lineage)"
    )
    # Only `calibration` is read; absent = the built-in bilingual calibration set.
    datasets: dict[str, DatasetInput] = Field(default_factory=dict)


class CompressRunSpec(BaseModel):
    """Envelope of a compression run."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    address: str = Field(description="e.g. compression/acme/qwen-w8a8")
    workdir: str = Field(description="run directory: events.jsonl, metrics.jsonl, result.json")
    output_dir: str = Field(description="where the compressed model folder goes (created atomically)")
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    spec: Compression
    inputs: CompressInputs
    resume: bool = False
