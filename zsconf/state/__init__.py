"""State store: tables (`models`) and the database handle with its lock (`store`).

Imported lazily by commands that need state (never at `zsconf --help` time): SQLAlchemy is heavy.
"""

from __future__ import annotations

from zsconf.state.models import ApiKey, Event, ModelVersion, ResourceRow, RunRow, UsageRecord
from zsconf.state.store import SCHEMA_VERSION, LockInfo, Store, open_store

__all__ = [
    "SCHEMA_VERSION",
    "ApiKey",
    "Event",
    "LockInfo",
    "ModelVersion",
    "ResourceRow",
    "RunRow",
    "Store",
    "UsageRecord",
    "open_store",
]
