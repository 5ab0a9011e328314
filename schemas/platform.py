"""The `platform:` section: where state, artifacts and the gateway live."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from schemas.common import Name, Spec

__all__ = ["Endpoint", "ExecutorSpec", "Platform"]


class Endpoint(Spec):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class ExecutorSpec(Spec):
    """Where jobs and model servers run: this machine (`local`) or a Ray cluster (`ray`)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        default=None,
        description="ray: the cluster's GCS address (HOST:PORT); default $RAY_ADDRESS, else the local "
        "cluster `ray start --head` left",
    )
    namespace: str | None = Field(
        default=None,
        description="ray: the namespace of this stack's actors; default zsconf-<stack folder name>",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )


class Platform(Spec):
    state_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite at .zsconf/state.db (ZSCONF_STATE_URL wins)"
    )
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    storage: str = Field(
        default=".zsconf/artifacts", description="artifact root, relative to the stack directory"
    )
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    gateway: Endpoint = Field(default_factory=Endpoint)
    admin: Endpoint = Field(default_factory=lambda: Endpoint(port=8001))
    default_tenant: Name | None = None

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_kind(cls, v: Any) -> Any:
        """`executor: local` is short for `executor: {kind: local}`."""
        return {"kind": v} if isinstance(v, str) else v
