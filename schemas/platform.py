"""The `platform:` section: where state, artifacts and the gateway live."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from schemas.common import Duration, Name, Spec

__all__ = ["Endpoint", "ExecutorSpec", "GatewaySettings", "Platform"]


class Endpoint(Spec):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class GatewaySettings(Endpoint):
    """The gateway: where it listens, and what it lets through for images."""

    image_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "host names (matched exactly) an image_url in a chat call may point at; the model server "
            "fetches them. Empty (the default): only base64 data URLs, nothing is fetched"
        ),
    )
    max_image_mb: float = Field(default=10, gt=0, le=100, description="largest base64 image in a chat call")
    image_url_ttl: Duration = Field(
        default=3600, description="how long an image made with response_format=url can be fetched (1h)"
    )


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
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    admin: Endpoint = Field(default_factory=lambda: Endpoint(port=8001))
    default_tenant: Name | None = None

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_kind(cls, v: Any) -> Any:
        """`executor: local` is short for `executor: {kind: local}`."""
        return {"kind": v} if isinstance(v, str) else v
