"""In-memory view of the ApiKey table: sha256 -> key, refreshed from the state store off the
request path (every `key_refresh_s`, default 0.5 s), so new, revoked and banned keys take effect
within about a second and no request touches the database.

Called by the app's background task (`refresh`, in an executor thread) and by the auth middleware
(`get`, a dict lookup). Also keeps each key's lifetime token total for the trial allowance, seeded
from the usage table at startup and then counted in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsconf.state import Store

__all__ = ["KeyCache", "KeyInfo"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    group: str
    banned: bool
    revoked: bool


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_hash: dict[str, KeyInfo] = {}
        self._digest: dict[bytes, str] = {}  # raw bearer bytes -> sha256 hex (bounded)
        self.tokens_used: dict[str, int] = {}

    def load_usage_totals(self) -> None:
        from sqlalchemy import func
        from sqlmodel import select

        from zsconf.state import UsageRecord

        with self._store.session() as s:
            q = select(
                UsageRecord.key_id,
                func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens),
            ).group_by(UsageRecord.key_id)
            for key_id, total in s.exec(q).all():
                self.tokens_used[key_id] = int(total or 0)

    def refresh(self) -> None:
        """Blocking: read every key (run in an executor thread)."""
        rows = self._store.api_keys()
        self._by_hash = {
            r.key_hash: KeyInfo(r.id, r.tenant, r.group, bool(r.banned), r.revoked_at is not None)
            for r in rows
        }

    def get(self, token: bytes) -> KeyInfo | None:
        digest = self._digest.get(token)
        if digest is None:
            digest = hashlib.sha256(token).hexdigest()
            if len(self._digest) > 10000:  # bound memory under a flood of random tokens
                self._digest.clear()
            self._digest[token] = digest
        return self._by_hash.get(digest)
