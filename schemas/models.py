"""Model resources: a base from the catalog plus optional imported weights (001 §5)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from schemas.common import Description, Resource

__all__ = ["Model", "Quantization"]

Quantization = Literal["none", "awq-w4a16", "smoothquant-w8a8", "gptq-w4a16", "gptq-w8a8", "fp8-dynamic"]


class Model(Resource):
    """A model in the registry. Versions are computed: imported weights are version 1, every job
    that outputs into this model adds the next one (at most 10).

    Without `path` the model is the catalog base itself (debug models are built locally on first
    use; real bases must be imported from a local HuggingFace folder)."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"base", "path", "quantization"})

    description: Description(100)  # type: ignore[valid-type]
    base: str = Field(min_length=1, description="catalog base model, e.g. Qwen2.5-7B or debug/tiny-qwen2")
    path: str | None = Field(default=None, description="local HuggingFace folder to import as version 1")
    quantization: Quantization = Field(default="none", description="template of imported weights")
    validate_weights: bool = Field(default=True, description="run the platform's weight checks on import")
