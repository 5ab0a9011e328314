"""Dataset resources: a file in the stack repo, in one of the manuals' formats (001 §6, 000 §4.6.2)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from schemas.common import Description, Resource

__all__ = ["Dataset", "DatasetFormat", "DatasetUsage"]

DatasetFormat = Literal["moss", "alpaca", "sharegpt", "csv", "xlsx", "pretrain"]
DatasetUsage = Literal["finetune", "pretrain", "evaluation", "calibration"]


class Dataset(Resource):
    """A published dataset. `path` is relative to the stack directory."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"path", "format"})

    description: Description(1000)  # type: ignore[valid-type]
    path: str = Field(min_length=1, description="jsonl, csv or xlsx file, relative to the stack directory")
    format: DatasetFormat
    usage: DatasetUsage = "finetune"
    min_samples: int = Field(default=1, ge=1, description="fail validation below this many samples")
