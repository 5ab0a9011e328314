"""SQLModel tables of the state store.

Imported by `zsconf.state.store` (which opens the database), by the engine (resources, runs, model
versions, events), by the gateway runner (ApiKey, UsageRecord: CONTRACTS.md section 3) and by the
daemon. Column shapes are a contract: bump `SCHEMA_VERSION` in store.py when they change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

__all__ = [
    "USAGE_COLUMNS",
    "ApiKey",
    "Event",
    "LeaseRow",
    "LockRow",
    "Meta",
    "ModelVersion",
    "ResourceRow",
    "RunRow",
    "StatusRow",
    "UsageRecord",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class ResourceRow(SQLModel, table=True):
    """One managed resource as last applied (desired spec + what apply produced)."""

    __tablename__ = "resources"

    address: str = Field(primary_key=True)
    kind: str = Field(index=True)
    tenant: str | None = Field(default=None, index=True)
    name: str
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    content_hash: str = ""
    # Keyed digest of the secret values in the spec as applied (`spec` holds them masked): a
    # changed secret is an in-place update, an unchanged one plans to no change. "" = no secrets.
    secrets_digest: str = ""
    # pending (intent written, side effect not confirmed) | applied | running | succeeded | failed
    # | deleting
    status: str = "pending"
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dependencies: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    generation: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RunRow(SQLModel, table=True):
    """One attempt of one runner process (a job, or one deployment instance)."""

    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(index=True)
    run_id: str = Field(index=True)
    attempt: int = 1
    content_hash: str = ""
    pid: int | None = None
    # Process start time as the executor reads it (e.g. /proc/PID/stat field 22): with the pid it
    # identifies the process even after the pid is reused.
    start_time: float | None = None
    host: str | None = None
    exit_code: int | None = None
    workdir: str = ""
    output_dir: str | None = None
    checkpoints: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The executor's handle (ProcessHandle / InstanceHandle as_dict), handed back to adopt after
    # a restart; for an instance, {"index": N} is written with the intent, before it starts.
    handle: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # intent (written before submit) | submitted | queued | running | succeeded | failed | cancelled
    status: str = "intent"
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ModelVersion(SQLModel, table=True):
    """A model version in the registry: imported, built, or produced by a job (at most 10)."""

    __tablename__ = "model_versions"

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(index=True)
    model: str = Field(index=True)
    version: int
    source_address: str | None = None
    source_run: str | None = None
    content_hash: str = ""
    path: str = ""
    format: str = "huggingface"
    quantization: str | None = None
    validated: bool = False
    gate_status: str | None = None  # passed | failed | None (no gate)
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A gateway API key (CONTRACTS.md section 3). Only the hash of the secret is stored."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True)  # "ak-" + 12 hex; public id
    tenant: str = Field(index=True)
    group: str = Field(index=True)  # service group name
    key_hash: str = Field(unique=True, index=True)  # sha256 hex of the full secret
    prefix: str  # first 10 chars of the secret, for display
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    banned: bool = False


class UsageRecord(SQLModel, table=True):
    """One gateway request (CONTRACTS.md section 3)."""

    __tablename__ = "usage_records"

    id: int | None = Field(default=None, primary_key=True)
    ts: float = Field(index=True)  # epoch seconds
    tenant: str = Field(index=True)
    group: str
    key_id: str = Field(index=True)
    model: str
    deployment: str
    instance: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    # Text-to-image calls (schema 4): images made, denoising steps of each, size HEIGHTxWIDTH.
    images: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    steps: int | None = None
    size: str | None = None


# A usage record's columns in declaration order (all but the id): the gateway's batched INSERT
# and the CSV export both follow it, so neither restates the table.
USAGE_COLUMNS: tuple[str, ...] = tuple(n for n in UsageRecord.model_fields if n != "id")


class Event(SQLModel, table=True):
    """An event the engine or the daemon records (applied, drift, run finished, ...)."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    ts: float = Field(index=True)
    address: str | None = Field(default=None, index=True)
    event: str
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class LockRow(SQLModel, table=True):
    """The state lock: at most one row (name = "state")."""

    __tablename__ = "lock"

    name: str = Field(default="state", primary_key=True)
    lock_id: str
    operation: str
    who: str
    host: str
    pid: int
    # With host and pid it proves the holder dead (a reused pid has another start time).
    start_time: float | None = None
    created: datetime = Field(default_factory=utcnow)


class LeaseRow(SQLModel, table=True):
    """A renewable leadership lease (name = "daemon"): one leader per state store.

    Taken and renewed with a compare-and-set UPDATE (holder is me, or the lease expired), so two
    daemons on one PostgreSQL store never both lead; `expires_at` is epoch seconds.
    """

    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str  # "host:pid:random" of the daemon holding it
    expires_at: float
    acquired_at: float
    renewed_at: float


class StatusRow(SQLModel, table=True):
    """A resource's two status axes as the daemon last recorded them (`zsconf status`).

    sync: Synced | OutOfSync | Unknown; health: Healthy | Progressing | Degraded | Suspended |
    Missing. `since` is the time (epoch seconds) of the last transition of either axis.
    """

    __tablename__ = "statuses"

    address: str = Field(primary_key=True)
    sync: str
    health: str
    reason: str = ""
    since: float
    updated_at: float


class Meta(SQLModel, table=True):
    """Key/value metadata: `serial` (bumped on every state write), `schema_version`, `lineage`."""

    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str
