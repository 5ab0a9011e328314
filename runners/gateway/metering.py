"""Usage metering: one UsageRecord per call, buffered in memory and written in batches.

Called by the handlers (`record`, an append: no I/O on the request path) and by the app's
lifespan (`run` flushes every `usage_flush_s` in an executor thread; `close` flushes what is left on
graceful shutdown, after uvicorn has finished the in-flight requests).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runners.gateway.proxy import Call
    from zsconf.state import Store

__all__ = ["Meter"]

log = logging.getLogger("runners.gateway")


class Meter:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._buf: list[tuple] = []
        self._lock = asyncio.Lock()

    def record(self, c: Call, ts: float, latency_s: float) -> None:
        """Buffer the usage row of a finished call, in `zsconf.state.USAGE_COLUMNS` order: ts,
        tenant, group, key_id, model, deployment, instance, prompt_tokens, completion_tokens,
        latency_ms, ttft_ms, status, error_code, stream, images, steps, size (a tuple: the cheapest
        thing to keep)."""
        key, dep, inst = c.key, c.dep, c.inst
        self._buf.append((
            ts, key.tenant, key.group, key.id, c.model, dep.name if dep is not None else c.model,
            inst.id if inst is not None else None, c.prompt, c.completion, latency_s * 1000.0,
            c.ttft * 1000.0 if c.ttft is not None else None, c.status, c.code, c.stream,
            c.images, c.steps, c.size,
        ))  # fmt: skip

    def _write(self, batch: list[tuple]) -> None:
        """The batch and its rollups (what the console reads), in one transaction."""
        from zsconf.state import USAGE_COLUMNS

        self._store.add_usage_rows([dict(zip(USAGE_COLUMNS, f, strict=True)) for f in batch])

    async def flush(self) -> None:
        async with self._lock:
            if not self._buf:
                return
            batch, self._buf = self._buf, []
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._write, batch)
            except Exception as exc:  # keep the records for the next try; never crash the gateway
                log.error("usage flush failed (%d records kept): %s", len(batch), exc)
                self._buf[:0] = batch

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # Shielded: a shutdown that cancels this task mid-flush lets the write finish (holding
            # the lock), so the final flush waits for it and the store is not closed under it.
            await asyncio.shield(self.flush())
