"""State store: tables (`models`) and the database handle with its lock (`store`).

Imported lazily by commands that need state (never at `zsconf --help` time): SQLAlchemy is heavy.
"""

from __future__ import annotations

from zsconf.state.models import (
    USAGE_COLUMNS,
    ApiKey,
    Event,
    LeaseRow,
    Meta,
    ModelVersion,
    ResourceRow,
    RunRow,
    StatusRow,
    UsageRecord,
)
from zsconf.state.store import SCHEMA_VERSION, LockInfo, Store, open_store

__all__ = [
    "SCHEMA_VERSION",
    "USAGE_COLUMNS",
    "ApiKey",
    "Event",
    "LeaseRow",
    "LockInfo",
    "Meta",
    "ModelVersion",
    "ResourceRow",
    "RunRow",
    "StatusRow",
    "Store",
    "UsageRecord",
    "open_store",
]
