"""Choosing an instance of a deployment and talking to it (aiohttp, one keep-alive session).

Called by the proxy service for every call. Policy: least outstanding requests among the healthy
instances; a connect failure (nothing sent back yet) is retried on another instance; an instance
with `unhealthy_after` consecutive connect failures is skipped for `unhealthy_for_s` seconds (when
every instance is marked down they are all tried anyway, so a recovered server is found again).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp

from runners.gateway.errors import Code, PlatformError

if TYPE_CHECKING:
    from runners.gateway.config import Deployment, Instance

__all__ = ["Upstream"]

# Failures before any response byte (refused, reset, closed by a dying server): the call is sent
# to another instance. A timeout is not retried: the server may still be working on it.
_CONNECT_ERRORS = (aiohttp.ClientConnectionError, ConnectionResetError)


class Upstream:
    def __init__(self, timeout_s: float, unhealthy_after: int, unhealthy_for_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)
        self._after = unhealthy_after
        self._for = unhealthy_for_s
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, force_close=False),
            timeout=self._timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _order(self, dep: Deployment, now: float) -> list[Instance]:
        healthy = [i for i in dep.instances if i.down_until <= now]
        pool = healthy or list(dep.instances)
        pool.sort(key=lambda i: i.outstanding)
        return pool

    async def post(
        self, dep: Deployment, path: str, body: bytes, auth: str | None
    ) -> tuple[aiohttp.ClientResponse, Instance]:
        """POST to the least loaded healthy instance; the caller must release the response and
        decrement `instance.outstanding` when done."""
        if not dep.instances:
            raise PlatformError(
                Code.INVOKE_MODEL_ERROR, f"model service {dep.name!r} has no running instance"
            )
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        last: Exception | None = None
        assert self.session is not None
        for inst in self._order(dep, time.monotonic()):
            inst.outstanding += 1
            try:
                resp = await self.session.post(inst.url + path, data=body, headers=headers)
            except aiohttp.ServerTimeoutError:
                inst.outstanding -= 1
                raise
            except _CONNECT_ERRORS as exc:
                inst.outstanding -= 1
                inst.failures += 1
                if inst.failures >= self._after:
                    inst.down_until = time.monotonic() + self._for
                last = exc
                continue
            except BaseException:
                inst.outstanding -= 1
                raise
            inst.failures = 0
            inst.down_until = 0.0
            return resp, inst
        raise PlatformError(
            Code.INVOKE_MODEL_ERROR, f"model service {dep.name!r} is unreachable: {type(last).__name__}"
        )
