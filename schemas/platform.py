"""The `platform:` section: where state, artifacts and the gateway live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Name, Spec

__all__ = ["Endpoint", "Platform"]


class Endpoint(Spec):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class Platform(Spec):
    state_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite at .zsconf/state.db (ZSCONF_STATE_URL wins)"
    )
    executor: Literal["local"] = "local"
    storage: str = Field(
        default=".zsconf/artifacts", description="artifact root, relative to the stack directory"
    )
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    gateway: Endpoint = Field(default_factory=Endpoint)
    admin: Endpoint = Field(default_factory=lambda: Endpoint(port=8001))
    default_tenant: Name | None = None
