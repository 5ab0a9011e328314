"""Readers of what runs and resources leave behind: the event table and a run's runner.log.

Shared by the admin API (`daemon.admin`), the web console (`daemon.console`) and the CLI when no
daemon answers (`zsconf events`, `zsconf logs`).
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zsconf.state import Store

__all__ = ["LOG_NAME", "MAX_LOG_CHUNK", "event_dict", "newest_event_id", "query_events", "read_log"]

MAX_LOG_CHUNK = 1 << 20
LOG_NAME = "runner.log"


def event_dict(ev: Any) -> dict[str, Any]:
    """An event as the API, `zsconf events --json` and the console show it."""
    return {"id": ev.id, "ts": ev.ts, "address": ev.address, "event": ev.event, "message": ev.message,
            "data": ev.data}  # fmt: skip


def query_events(
    store: Store,
    since: int = 0,
    address: str | None = None,
    since_ts: float | None = None,
    tail: int | None = None,
    limit: int = 1000,
) -> list[Any]:
    """Events with id > `since` (and ts >= `since_ts`), oldest first; `tail`: only the newest
    `tail` of them. Also what `zsconf events` reads when no daemon runs."""
    from sqlmodel import col, select

    from zsconf.state import Event

    q = select(Event).where(col(Event.id) > since)
    if address:
        q = q.where(Event.address == address)
    if since_ts is not None:
        q = q.where(col(Event.ts) >= since_ts)
    limit = max(1, min(limit, 10000))
    with store.session() as s:
        if tail is not None:
            rows = list(s.exec(q.order_by(col(Event.id).desc()).limit(max(0, min(tail, limit)))).all())
            return rows[::-1]
        return list(s.exec(q.order_by(col(Event.id)).limit(limit)).all())


def newest_event_id(store: Store) -> int:
    """The highest event id now (0 when none): a cursor past everything already written."""
    from sqlalchemy import func, select

    from zsconf.state import Event

    t = Event.__table__  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.max(t.c.id))).scalar() or 0)


def read_log(workdir: str, offset: int) -> tuple[str, int, int]:
    """(text, next offset, file size) of `<workdir>/runner.log` from byte `offset` (< 0: the last
    -offset bytes), at most 1 MB. A multi-byte character cut at the end is left for next time;
    one cut at a negative start is replaced."""
    path = Path(workdir) / LOG_NAME
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            f.seek(start)
            chunk = f.read(MAX_LOG_CHUNK)
    except OSError:
        return "", max(offset, 0), 0
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    text = dec.decode(chunk, final=False)
    pending = len(dec.getstate()[0])
    return text, start + len(chunk) - pending, size
