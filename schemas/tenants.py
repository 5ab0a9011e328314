"""Tenants and their quotas (the one-stop platform's per-user limits and queues, 000 §1.6, §4.7)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas.common import Description, Lifecycle, Name, Spec

__all__ = ["Queue", "Quota", "Tenant"]


class Quota(Spec):
    """Upper bounds; `None` means unlimited."""

    max_cards: int | None = Field(default=None, ge=0, description="accelerator cards in use at once")
    max_cpu_cores: int | None = Field(default=None, ge=0)
    max_storage_gb: int | None = Field(default=None, ge=0)
    max_concurrent_jobs: int | None = Field(default=None, ge=0)
    max_deployments: int | None = Field(default=None, ge=0)


class Queue(Spec):
    """A queue of a dedicated pool: jobs wait here in priority order when cards are busy."""

    share: float = Field(default=1.0, gt=0, le=1, description="share of the pool's cards")


class Tenant(Spec):
    """A team or user; every other resource belongs to one."""

    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"description", "quotas", "queues", "lifecycle"})
    REPLACE: ClassVar[frozenset[str]] = frozenset()

    description: Description(256)  # type: ignore[valid-type]
    quotas: Quota = Field(default_factory=Quota)
    queues: dict[Name, Queue] = Field(default_factory=lambda: {"default": Queue()})
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)

    @classmethod
    def forces_replace(cls, field: str) -> bool:
        return False
