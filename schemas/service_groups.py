"""Service groups: bundles of deployments behind API keys, with limits (000 §4.4, §5; 001 §11)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas.common import Description, Name, Resource, Spec

__all__ = ["Limits", "Moderation", "RateLimits", "ServiceGroup"]


class Limits(Spec):
    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute (prompt + completion)")
    ipm: int | None = Field(default=None, ge=1, description="images per minute (text-to-image services)")


class RateLimits(Spec):
    per_key: Limits = Field(default_factory=Limits)
    per_model: dict[Name, Limits] = Field(default_factory=dict, description="deployment name -> limits")


class Moderation(Spec):
    blocklist: list[str] = Field(default_factory=list, description="words refused in input and output")
    check_output: bool = True


class ServiceGroup(Resource):
    """Everything but the tenant updates in place; keys are computed and shown once."""

    REPLACE: ClassVar[frozenset[str]] = frozenset()
    IN_PLACE: ClassVar[frozenset[str]] = frozenset(
        {
            "description",
            "lifecycle",
            "services",
            "keys",
            "enabled",
            "rate_limits",
            "trial_tokens",
            "moderation",
        }
    )

    description: Description(256)  # type: ignore[valid-type]
    services: list[Name] = Field(default_factory=list, description="deployment names")
    keys: int = Field(default=1, ge=1, le=5, description="number of API keys (1-5)")
    enabled: bool = True
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    trial_tokens: int | None = Field(default=None, ge=1, description="token allowance per key, then 600005")
    moderation: Moderation = Field(default_factory=Moderation)
