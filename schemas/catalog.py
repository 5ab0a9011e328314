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
    "DebugPipeline",
    "DebugVision",
    "Estimates",
    "FinetuneMethod",
    "Flavor",
    "ImageOptions",
    "ModelEntry",
    "Task",
    "compression_allowed",
    "parse_size",
]

FinetuneMethod = Literal["full", "lora", "continued_pretrain"]
# What a model does (the one-stop manual's API chapter: `chat` serves text generation and image
# understanding, `image` serves text-to-image).
Task = Literal["text-generation", "image-understanding", "text-to-image"]
Range = tuple[float, float]
_SIZE_RE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

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


class DebugVision(DebugDims):
    """A debug image-understanding model (runners.debug_models.vision): the text dims plus a tiny
    vision tower."""

    vision_depth: int = Field(gt=0)
    vision_embed_dim: int = Field(gt=0)
    vision_num_heads: int = Field(gt=0)


class DebugPipeline(_Strict):
    """A debug text-to-image pipeline (runners.debug_models.diffusion): a Stable-Diffusion-shaped
    UNet, VAE and CLIP text encoder from configs, random weights from `seed`."""

    unet_channels: list[int] = Field(min_length=1, description="UNet block_out_channels")
    vae_channels: list[int] = Field(min_length=1, description="VAE block_out_channels (2^(n-1) x down)")
    text_hidden_size: int = Field(gt=0, description="CLIP text encoder width = UNet cross-attention dim")
    text_layers: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    seed: int = 0


def parse_size(size: str) -> tuple[int, int]:
    """`HxW` (the manual: height x width) -> (height, width); ValueError otherwise."""
    m = _SIZE_RE.match(size)
    if m is None:
        raise ValueError(f"size {size!r}: expected HEIGHTxWIDTH, e.g. 512x512")
    return int(m.group(1)), int(m.group(2))


class ImageOptions(_Strict):
    """What a text-to-image model accepts (`/v1/images/generations`, one-stop manual 000 §5.5.2):
    the gateway refuses a request outside these with 400/500002 naming the parameter, and the
    image server applies the defaults and the style's prompt suffix."""

    sizes: list[str] = Field(min_length=1, description="HEIGHTxWIDTH, the manual's order")
    default_size: str = "512x512"
    steps: tuple[int, int] = Field(default=(1, 50), description="num_inference_steps range")
    default_steps: int = Field(default=20, gt=0)
    max_n: int = Field(default=4, ge=1, le=10, description="images per request")
    styles: dict[str, str] = Field(
        min_length=1, description="style -> what it adds to the prompt (revised_prompt); '' = nothing"
    )
    default_style: str = "standard"
    guidance_scale: float = Field(default=7.5, ge=0)
    seconds_per_step: float = Field(
        default=0.1, gt=0, description="one 512x512 denoising step on one card (the plan's estimate)"
    )

    @model_validator(mode="after")
    def _defaults_allowed(self) -> ImageOptions:
        for size in self.sizes:
            parse_size(size)
        lo, hi = self.steps
        if not 1 <= lo <= hi:
            raise ValueError(f"steps: expected 1 <= lower <= upper, got [{lo}, {hi}]")
        if self.default_size not in self.sizes:
            raise ValueError(f"default_size {self.default_size!r} is not one of sizes")
        if not lo <= self.default_steps <= hi:
            raise ValueError(f"default_steps {self.default_steps} is outside steps [{lo}, {hi}]")
        if self.default_style not in self.styles:
            raise ValueError(f"default_style {self.default_style!r} is not one of styles")
        return self


class ModelEntry(_Strict):
    """One base model (studio manual 001 tables 6-1, 6-2, 6-6, 6-7, 7-2, 7-4, 8-2)."""

    family: str
    architecture: str = Field(
        description="transformers model_type (diffusers: the pipeline, e.g. stable-diffusion)"
    )
    task: Task = "text-generation"
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
    debug: DebugDims | DebugVision | DebugPipeline | None = None
    images: ImageOptions | None = Field(default=None, description="text-to-image models: what they accept")
    tool_parser: str | None = Field(
        default=None, description="vLLM tool-call parser of the family's format (001 §12); null = none"
    )

    @model_validator(mode="after")
    def _ranges(self) -> ModelEntry:
        for method, value in self.finetune.items():
            _check_range(value, f"finetune.{method}")
        for strategy, value in self.compression_minutes.items():
            _check_range(value, f"compression_minutes.{strategy}")
        if (self.task == "text-to-image") != (self.images is not None):
            raise ValueError("images: required for a text-to-image model, and only for one")
        if self.task == "text-to-image" and (self.finetune or self.compression):
            raise ValueError(
                "a text-to-image model has no fine-tuning or compression (finetune, compression)"
            )
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
