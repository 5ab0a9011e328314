"""The JSON spec of one weight-validation run (`python -m runners.validate SPEC.json`).

Written by the engine for imported models and job outputs; read by `runners/validate/__main__.py`.
Envelope of CONTRACTS.md §2 minus the training fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ValidateRunSpec"]


class ValidateRunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    address: str = Field(description="e.g. model/acme/support@2")
    workdir: str = Field(description="run directory: events.jsonl, result.json")
    model_dir: str = Field(min_length=1, description="absolute path of the HuggingFace model folder to check")
    quantized: bool = Field(default=False, description="the model's template is a quantized one (AWQ / W8A8)")
