"""Deployments (online inference services, 001 §8, §13; 000 §4.4)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from schemas.common import Description, Duration, ModelRef, Notify, Resource

__all__ = ["Deployment"]


class Deployment(Resource):
    """N instances of a model server behind the gateway.

    `instances`, `qps`, `state`, `content_moderation`, `auto_stop` and the model version (for
    `@latest`) change in place: scaling and upgrades are rolling, without dropped requests."""

    REPLACE: ClassVar[frozenset[str]] = frozenset({"engine", "flavor", "max_model_len", "engine_args"})
    IN_PLACE: ClassVar[frozenset[str]] = frozenset(
        {
            "description",
            "lifecycle",
            "model",
            "instances",
            "qps",
            "content_moderation",
            "auto_stop",
            "state",
            "notify",
            "adapter_on",
        }
    )

    description: Description(256)  # type: ignore[valid-type]
    model: ModelRef = Field(description="NAME@N or NAME@latest (follows new versions, rolling)")
    engine: Literal["auto", "vllm", "embedded", "diffusers"] = Field(
        default="auto",
        description=(
            "auto = vLLM wherever its engine environment is or can be installed, else embedded; "
            "diffusers for a text-to-image model"
        ),
    )
    flavor: str = "cpu.small"
    instances: int = Field(default=1, ge=1, le=128)
    qps: float | None = Field(default=None, gt=0, le=100000, description="QPS limit of the whole service")
    max_model_len: int | None = Field(default=None, ge=16, le=1048576)
    content_moderation: bool = True
    auto_stop: Duration | None = None
    state: Literal["running", "stopped"] = "running"
    engine_args: dict[str, Any] = Field(default_factory=dict, description="extra engine flags, e.g. vLLM's")
    notify: Notify = Field(default_factory=Notify)
    adapter_on: str | None = Field(
        default=None,
        description=(
            "serve this LoRA fine-tune's output as an adapter on the servers of the named deployment "
            "(same tenant, vLLM, serving the fine-tune's base model) instead of merged weights on "
            "servers of its own; instances, flavor and engine then follow that deployment"
        ),
    )
