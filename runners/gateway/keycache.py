"""In-memory view of the ApiKey table: sha256 -> key, refreshed from the state store off the
request path (every `key_refresh_s`, default 0.5 s), so revoked and banned keys take effect within
about a second and a known key's request never touches the database. A key the view does not know
yet (created a moment ago: `export ZSCONF_KEY=$(zsconf keys create ...)` then a call) is looked up
once by its hash in a worker thread; unknown hashes are remembered for a second and lookups are
capped per second, so a flood of random tokens cannot turn into database load.

Called by the app's background task (`refresh`, in an executor thread) and by the auth middleware
(`get`, a dict lookup). Also keeps each key's lifetime token total for the trial allowance, seeded
from the usage table at startup and then counted in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsconf.state import ApiKey, Store

__all__ = ["KeyCache", "KeyInfo"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    group: str
    banned: bool
    revoked: bool


MISS_TTL_S = 1.0  # an unknown hash is not looked up again within this long
LOOKUPS_PER_S = 20  # database lookups of unknown hashes, at most


def _info(r: ApiKey) -> KeyInfo:
    return KeyInfo(r.id, r.tenant, r.group, bool(r.banned), r.revoked_at is not None)


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_hash: dict[str, KeyInfo] = {}
        self._digest: dict[bytes, str] = {}  # raw bearer bytes -> sha256 hex (bounded)
        self._missed: dict[str, float] = {}  # unknown hash -> when it was looked up (bounded)
        self._lookups: list[float] = []  # times of recent lookups (the per-second cap)
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
        self._by_hash = {r.key_hash: _info(r) for r in self._store.api_keys()}

    def get(self, token: bytes) -> KeyInfo | None:
        digest = self._digest.get(token)
        if digest is None:
            digest = hashlib.sha256(token).hexdigest()
            if len(self._digest) > 10000:  # bound memory under a flood of random tokens
                self._digest.clear()
            self._digest[token] = digest
        return self._by_hash.get(digest)

    async def lookup(self, token: bytes) -> KeyInfo | None:
        """A key the view does not hold yet, read from the store by its hash (see above)."""
        digest = self._digest.get(token) or hashlib.sha256(token).hexdigest()
        now = time.monotonic()
        if now - self._missed.get(digest, -MISS_TTL_S) < MISS_TTL_S:
            return None
        self._lookups = [t for t in self._lookups if now - t < 1.0]
        if len(self._lookups) >= LOOKUPS_PER_S:
            return None
        self._lookups.append(now)
        if len(self._missed) > 10000:
            self._missed.clear()
        self._missed[digest] = now
        row = await asyncio.get_running_loop().run_in_executor(None, self._store.api_key_by_hash, digest)
        if row is None:
            return None
        info = self._by_hash[digest] = _info(row)
        self._missed.pop(digest, None)
        return info
