"""Job resources: fine-tunes, compressions, evaluations (001 §6, §7; 000 §4.3, §4.5).

A job that already ran is never edited: any change of its inputs is a new run (a replace) that
produces a new model version. Only options that steer a running job update in place.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from schemas.common import Description, Duration, ModelRef, Name, Notify, Percent, Resource, Spec

__all__ = [
    "AutoRestart",
    "Calibration",
    "Compression",
    "CompressionGate",
    "CompressionStrategy",
    "Evaluation",
    "EvaluationGate",
    "Finetune",
    "FinetuneDatasets",
    "Hyperparameters",
    "JobOptions",
    "JobResources",
    "Output",
]

# Stage of DeepSpeed ZeRO; `None` = plain DDP / single device.
DeepSpeedStage = Literal[1, 2, 3]


class JobResources(Spec):
    """Where a job runs: flavor (cards per node), nodes, queue and priority."""

    flavor: str = Field(
        default="cpu.small", description="hardware flavor from the catalog (zsconf catalog flavors)"
    )
    nodes: int = Field(default=1, ge=1, le=64)
    queue: Name = "default"
    priority: int = Field(default=0, ge=-100, le=100, description="higher runs first when waiting for cards")
    deepspeed_stage: DeepSpeedStage | None = None


class AutoRestart(Spec):
    """Restart on failure, resuming from the latest checkpoint (001 §6)."""

    enabled: bool = True
    max_restarts: int = Field(default=3, ge=1, le=128)
    # Restart on any failure, not only environment faults; at most 3 restarts in a row.
    unconditional: bool = False


class JobOptions(Spec):
    auto_stop: Duration | None = Field(
        default=None, description="maximum running time of the job, restarts included, e.g. 2h"
    )
    auto_restart: AutoRestart = Field(default_factory=AutoRestart)
    notify: Notify = Field(default_factory=Notify)
    keep_logs: bool = Field(default=False, description="keep logs forever (else 30 days)")


class Output(Spec):
    """Where the produced weights go: a new model (version 1) or the next version of a model."""

    model: Name
    mode: Literal["new_model", "new_version"] = "new_model"
    description: Description(100)  # type: ignore[valid-type]


class FinetuneDatasets(Spec):
    train: Name
    validation: Name | None = None


class Hyperparameters(Spec):
    """Ranges from 001 §6."""

    epochs: int = Field(default=3, ge=1, le=100)
    # iterations = ceil(samples / global_batch) x epochs unless given (1-100000).
    iterations: int | Literal["auto"] = "auto"
    learning_rate: float = Field(default=2e-5, gt=0, le=0.1)
    global_batch_size: int = Field(default=32, ge=1, le=4096)
    micro_batch_size: int = Field(default=1, ge=1, le=512)
    sequence_length: int = Field(default=4096, ge=16, le=131072)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    lora_rank: int = Field(default=8, ge=1, le=1024)
    lora_alpha: int = Field(default=16, ge=1, le=4096)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    checkpoints: int = Field(default=1, ge=1, le=10, description="checkpoints kept, 1-min(iterations, 10)")
    seed: int = Field(default=42, ge=0)

    @field_validator("iterations")
    @classmethod
    def _iterations_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 100000:
            raise ValueError("iterations must be 'auto' or 1-100000")
        return value

    @model_validator(mode="after")
    def _checkpoints_le_iterations(self) -> Hyperparameters:
        if isinstance(self.iterations, int) and self.checkpoints > self.iterations:
            raise ValueError(f"checkpoints must be 1-min(iterations, 10) = 1-{min(self.iterations, 10)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        return self


class Finetune(Resource):
    """A fine-tune job: full, LoRA or continued pre-training of `model` on `datasets.train`."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"*"})
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"description", "lifecycle", "options"})

    description: Description(1000)  # type: ignore[valid-type]
    model: ModelRef = Field(description="input model: NAME, NAME@N or NAME@latest")
    method: Literal["full", "lora", "continued_pretrain"] = "lora"
    datasets: FinetuneDatasets
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: JobResources = Field(default_factory=JobResources)
    output: Output
    options: JobOptions = Field(default_factory=JobOptions)


# smoothquant-w8a8, awq-w4a16, gptq-w4a16, gptq-w8a8, fp8-dynamic, or the general W<bits>A<bits>[C<bits>].
_WAC_RE = re.compile(r"^W(4|8|16)A(4|8|16)(C(8|16))?$")
NAMED_STRATEGIES = ("smoothquant-w8a8", "awq-w4a16", "gptq-w4a16", "gptq-w8a8", "fp8-dynamic")
CompressionStrategy = str


class Calibration(Spec):
    dataset: Name | None = Field(default=None, description="a dataset of the stack; default: built-in set")
    samples: int = Field(default=64, ge=1, le=4096)
    sequence_length: int = Field(default=512, ge=16, le=32768)


class CompressionGate(Spec):
    """Quality gate: the output is not promoted when it fails."""

    max_perplexity_increase: Percent | None = Field(default=None, description="e.g. 5%")


class Compression(Resource):
    """A compression job with llm-compressor (oneshot)."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"*"})
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"description", "lifecycle", "options", "gate"})

    description: Description(1000)  # type: ignore[valid-type]
    model: ModelRef
    strategy: CompressionStrategy = Field(
        description="smoothquant-w8a8, awq-w4a16, gptq-w4a16, gptq-w8a8, fp8-dynamic, or WxAx[Cx] e.g. W8A8C8"
    )
    smoothing_strength: float = Field(default=0.5, ge=0, le=1, description="SmoothQuant migration strength")
    calibration: Calibration = Field(default_factory=Calibration)
    resources: JobResources = Field(default_factory=JobResources)
    output: Output
    gate: CompressionGate = Field(default_factory=CompressionGate)
    options: JobOptions = Field(default_factory=JobOptions)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value in NAMED_STRATEGIES or _WAC_RE.match(value):
            return value
        raise ValueError(
            f"unknown strategy {value!r}: expected one of {', '.join(NAMED_STRATEGIES)} or WxAx[Cx] "
            "(bits 4/8/16, e.g. W8A8C8)"
        )


class EvaluationGate(Spec):
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    min_rouge_1: float | None = Field(default=None, ge=0, le=1)
    min_rouge_2: float | None = Field(default=None, ge=0, le=1)
    min_rouge_l: float | None = Field(default=None, ge=0, le=1)
    min_bleu_4: float | None = Field(default=None, ge=0, le=1)


class Evaluation(Resource):
    """Score a model version on a benchmark dataset (000 §4.5.1)."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"*"})
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"description", "lifecycle", "options", "gate"})

    description: Description(1000)  # type: ignore[valid-type]
    model: ModelRef
    dataset: Name
    metrics: list[Literal["accuracy", "rouge_1", "rouge_2", "rouge_l", "bleu_4"]] = Field(
        default_factory=lambda: ["accuracy", "rouge_1", "rouge_2", "rouge_l", "bleu_4"]
    )
    max_samples: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    batch_size: int = Field(default=8, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 = greedy (deterministic)")
    resources: JobResources = Field(default_factory=JobResources)
    gate: EvaluationGate = Field(default_factory=EvaluationGate)
    options: JobOptions = Field(default_factory=JobOptions)
