"""The catalog's file shapes (`recipes/catalog/models.yaml`, `flavors.yaml`, `estimates.yaml`).

Loaded by `zsconf.catalog.load_catalog`; the graph, the planner, the engine and the debug model builder
read entries through it. Lookups and the planner's helpers live here as methods so that any holder of
a `Catalog` can use them without importing zsconf.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Catalog",
    "DebugDims",
    "Estimates",
    "FinetuneMethod",
    "Flavor",
    "ModelEntry",
    "compression_allowed",
]

FinetuneMethod = Literal["full", "lora", "continued_pretrain"]
Range = tuple[float, float]

# A general WxAx[Cx] strategy that is exactly one of the manual's named ones counts as that one.
_WAC_RE = re.compile(r"^W(\d+)A(\d+)(?:C(\d+))?$", re.IGNORECASE)
_WAC_ALIASES = {"W8A8": "smoothquant-w8a8", "W4A16": "awq-w4a16"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: Range, what: str) -> None:
    lo, hi = value
    if lo < 0 or hi < lo:
        raise ValueError(f"{what}: expected 0 <= lower <= upper, got [{lo}, {hi}]")


class DebugDims(_Strict):
    """Dimensions of a debug model built offline (runners.debug_models)."""

    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    seed: int = 0


class ModelEntry(_Strict):
    """One base model (studio manual 001 tables 6-1, 6-2, 6-6, 6-7, 7-2, 7-4, 8-2)."""

    family: str
    architecture: str = Field(description="transformers model_type")
    params_b: float = Field(gt=0, description="parameters, billions")
    finetune: dict[FinetuneMethod, Range] = Field(default_factory=dict, description="tokens/s per card")
    compression: list[str] = Field(default_factory=list, description='strategies allowed; "*" = all')
    compression_minutes: dict[str, Range] = Field(default_factory=dict)
    pre_post_hours: float = Field(ge=0)
    samples_per_iteration: int = Field(default=32, gt=0)
    coefficient: float | None = Field(default=None, gt=0, description="overrides estimates.coefficient")
    max_model_len: int = Field(default=4096, gt=0)
    qps_per_instance: float = Field(gt=0)
    qps_per_instance_quantized: dict[str, float] = Field(default_factory=dict)
    dataset_formats: list[Literal["moss", "alpaca", "sharegpt", "csv", "xlsx", "pretrain"]] = Field(
        default_factory=list
    )
    checkpoint_format: Literal["huggingface", "megatron"] | None = None
    debug: DebugDims | None = None
    tool_parser: str | None = Field(
        default=None, description="vLLM tool-call parser of the family's format (001 §12); null = none"
    )

    @model_validator(mode="after")
    def _ranges(self) -> ModelEntry:
        for method, value in self.finetune.items():
            _check_range(value, f"finetune.{method}")
        for strategy, value in self.compression_minutes.items():
            _check_range(value, f"compression_minutes.{strategy}")
        return self


class Flavor(_Strict):
    """A hardware flavor (one-stop manual 000 §2, plus CPU and example NVIDIA flavors)."""

    description: str = ""
    device: Literal["cpu", "gpu", "npu"]
    accelerator: str | None = None
    cards: int = Field(ge=0, description="accelerator cards per node; 0 for CPU flavors")
    cpu: int = Field(gt=0)
    memory_gb: float = Field(gt=0)
    price_per_hour: float | None = Field(default=None, ge=0, description="CNY; null = monthly only")
    price_per_month: float | None = Field(default=None, ge=0)


class Estimates(_Strict):
    """`hours = coefficient × iterations ÷ (cards × nodes × throughput) + pre_post_hours`."""

    coefficient: float = Field(gt=0)
    reference_sequence_length: int = Field(default=4096, gt=0)
    currency: str = Field(default="CNY", description="the currency of every price in the catalog")


def compression_allowed(entry: ModelEntry, strategy: str) -> bool:
    """Rule for table 7-2: a strategy is allowed when the entry lists it or lists "*". A general
    WxAx strategy without a KV-cache part that equals a named one (W8A8 = smoothquant-w8a8,
    W4A16 = awq-w4a16) is allowed when that named one is; any other WxAx[Cx] needs "*"."""
    allowed = entry.compression
    if "*" in allowed or strategy in allowed:
        return True
    m = _WAC_RE.match(strategy)
    if m and m.group(3) is None:
        alias = _WAC_ALIASES.get(f"W{m.group(1)}A{m.group(2)}")
        return alias is not None and alias in allowed
    return False


def _unknown(what: str, name: str, known: list[str]) -> KeyError:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    if not close:
        low = name.lower()
        close = [k for k in known if low and (low in k.lower() or k.lower() in low)][:4]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown {what} {name!r}{hint} (`zsconf catalog {what}s` lists them)")


class Catalog(_Strict):
    """The whole catalog: models, flavors and estimate constants."""

    models: dict[str, ModelEntry]
    flavors: dict[str, Flavor]
    estimates: Estimates

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise _unknown("model", name, list(self.models)) from None

    def flavor(self, name: str) -> Flavor:
        try:
            return self.flavors[name]
        except KeyError:
            raise _unknown("flavor", name, list(self.flavors)) from None

    def _entry(self, model: str | ModelEntry) -> ModelEntry:
        return model if isinstance(model, ModelEntry) else self.model(model)

    def supports_finetune(self, model: str | ModelEntry, method: str) -> bool:
        """Table 6-1: a method is supported when the entry has its throughput."""
        return method in self._entry(model).finetune

    def supports_compression(self, model: str | ModelEntry, strategy: str) -> bool:
        """Table 7-2, with the rule of `compression_allowed`."""
        return compression_allowed(self._entry(model), strategy)

    def throughput(self, model: str | ModelEntry, method: str) -> Range:
        """(lower, upper) tokens/s per card; KeyError when the method is unsupported."""
        entry = self._entry(model)
        try:
            return entry.finetune[method]  # type: ignore[index]
        except KeyError:
            name = model if isinstance(model, str) else entry.family
            supported = ", ".join(entry.finetune) or "none"
            raise KeyError(f"{name} does not support {method} fine-tuning (supported: {supported})") from None

    def coefficient(self, model: str | ModelEntry) -> float:
        entry = self._entry(model)
        return entry.coefficient if entry.coefficient is not None else self.estimates.coefficient

    def job_hours(
        self,
        model: str | ModelEntry | None = None,
        method: str = "lora",
        iterations: int = 1,
        cards: int = 1,
        nodes: int = 1,
        *,
        base: str | None = None,
        global_batch_size: int | None = None,
        sequence_length: int | None = None,
    ) -> Range:
        """(lower, upper) hours: coefficient × iterations ÷ (cards × nodes × throughput) + pre/post.
        The lower bound uses the upper throughput. `cards` 0 (CPU flavors) counts as 1 device. When
        both `global_batch_size` and `sequence_length` are given and differ from the entry's
        samples per iteration and the reference length, the coefficient scales with their product
        (coefficient = samples × length ÷ 3600 s)."""
        if model is None:
            if base is None:
                raise TypeError("job_hours needs a model")
            model = base
        entry = self._entry(model)
        lo_tp, hi_tp = self.throughput(model, method)
        coef = self.coefficient(entry)
        if global_batch_size and sequence_length:
            ref = entry.samples_per_iteration * self.estimates.reference_sequence_length
            if entry.coefficient is None and global_batch_size * sequence_length != ref:
                coef = coef * global_batch_size * sequence_length / ref
        devices = max(int(cards), 1) * max(int(nodes), 1)
        pre = entry.pre_post_hours

        def hours(tp: float) -> float:
            return math.inf if tp <= 0 else coef * iterations / (devices * tp) + pre

        return hours(hi_tp), hours(lo_tp)

    def recommended_instances(
        self, model: str | ModelEntry, qps: float, quantization: str | None = None
    ) -> int:
        """Table 8-2: ceil(qps ÷ per-instance QPS), at least 1; `quantization` (awq-w4a16,
        smoothquant-w8a8, ...) uses the quantized figure when the manual has one."""
        entry = self._entry(model)
        per = entry.qps_per_instance
        if quantization and quantization != "none":
            per = entry.qps_per_instance_quantized.get(quantization, per)
        return max(1, math.ceil(qps / per))
