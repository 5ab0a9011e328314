"""The Litestar application: controllers per resource, the auth middleware, the shared services.

Called by `runners.gateway.__main__` (`create_app(spec)`), and by tests through the real process.
Wiring: one `Gateway` object holds the services (key cache, limiter, meter, metrics, upstream
client, routing table) and is injected into the controllers with `Provide`; the auth middleware is
stateless (it reads the key cache through the app state). Background tasks (key refresh, config
reload, usage flush) start in the lifespan and the usage buffer is flushed at shutdown, after
uvicorn has finished the in-flight requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Controller, Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.response import Stream

from runners.gateway.config import Table, load_table
from runners.gateway.errors import PlatformError, error_body
from runners.gateway.keycache import KeyCache
from runners.gateway.limits import Limiter
from runners.gateway.metering import Meter
from runners.gateway.metrics import Metrics
from runners.gateway.proxy import Proxy
from runners.gateway.upstream import Upstream

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from schemas.run_gateway import GatewaySpec

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("runners.gateway")
_JSON = "application/json"
_PUBLIC = frozenset({"/health", "/metrics"})


class Gateway:
    """The shared services of one gateway process."""

    def __init__(self, spec: GatewaySpec) -> None:
        from zsconf.state import open_store

        self.spec = spec
        self.store = open_store(spec.state_url)
        self.keys = KeyCache(self.store)
        self.keys.refresh()
        self.keys.load_usage_totals()
        self.table: Table = load_table(spec.config_path)
        self.meter = Meter(self.store, spec.usage_flush_s)
        self.metrics = Metrics()
        self.upstream = Upstream(spec.upstream_timeout_s, spec.unhealthy_after, spec.unhealthy_for_s)
        self.proxy = Proxy(self.keys, Limiter(), self.meter, self.metrics, self.upstream)
        self.proxy.table = self.table
        self._tasks: list[asyncio.Task] = []
        self._last_check = 0.0

    # -- config and keys -----------------------------------------------------------------------
    def reload(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.spec.config_path).st_mtime
            if force or mtime != self.table.mtime:
                self.table = load_table(self.spec.config_path, self.table)
                self.proxy.table = self.table
                log.info("config reloaded")
        except Exception as exc:  # a bad file keeps the last good table
            log.error("config reload failed, keeping the previous one: %s", exc)

    async def _loop_config(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.reload()

    async def _loop_keys(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.spec.key_refresh_s)
            try:
                await loop.run_in_executor(None, self.keys.refresh)
            except Exception as exc:
                log.error("key refresh failed: %s", exc)

    async def start(self) -> None:
        await self.upstream.start()
        self._tasks = [
            asyncio.create_task(t) for t in (self._loop_config(), self._loop_keys(), self.meter.run())
        ]
        with contextlib.suppress(NotImplementedError, RuntimeError):
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload, True)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.meter.flush()
        await self.upstream.close()
        self.store.close()

    # -- auth ------------------------------------------------------------------------------------
    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any]:
        token = None
        for name, value in headers:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    token = value[7:].strip()
                break
        if not token:
            raise PlatformError("500004", "missing API key: send Authorization: Bearer <key>")
        key = self.keys.get(token)
        if key is None or key.revoked:
            raise PlatformError("500004", "incorrect API key provided")
        if key.banned:
            raise PlatformError("700003", "this API key is banned")
        group = self.table.groups.get((key.tenant, key.group))
        if group is None or not group.enabled:
            raise PlatformError("500004", f"service group {key.tenant}/{key.group} is disabled or absent")
        return key, group


def auth_middleware(app: ASGIApp) -> ASGIApp:
    """Stateless: resolves the bearer key to (key, group) in `scope['zs_principal']` or answers
    with the platform error. /health and /metrics are public."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _PUBLIC:
            gw: Gateway = scope["app"].state.gateway
            try:
                scope["zs_principal"] = gw.authenticate(scope["headers"])  # type: ignore[typeddict-unknown-key]
            except PlatformError as err:
                await _send_error(send, err)
                return
        await app(scope, receive, send)

    return middleware


async def _send_error(send: Send, err: PlatformError) -> None:
    body = err.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers().items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _gateway(state: State) -> Gateway:
    return state.gateway


async def _call(request: Request, gw: Gateway, kind: str) -> Response | Stream:
    key, group = request.scope["zs_principal"]  # type: ignore[typeddict-item]
    out = await gw.proxy.handle(key, group, await request.body(), kind)
    if isinstance(out, tuple):
        status, body, headers = out
        return Response(body, status_code=status, media_type=_JSON, headers=headers)
    return Stream(out, media_type="text/event-stream", headers={"cache-control": "no-cache"})


class ChatController(Controller):
    path = "/v1/chat/completions"

    @post(status_code=200)
    async def create(self, request: Request, gw: Gateway) -> Response | Stream:
        return await _call(request, gw, "chat")


class CompletionsController(Controller):
    path = "/v1/completions"

    @post(status_code=200)
    async def create(self, request: Request, gw: Gateway) -> Response | Stream:
        return await _call(request, gw, "completion")


class ModelsController(Controller):
    path = "/v1/models"

    @get()
    async def list_models(self, request: Request) -> Response:
        _key, group = request.scope["zs_principal"]  # type: ignore[typeddict-item]
        return Response(group.models_body, media_type=_JSON)


class HealthController(Controller):
    path = "/health"

    @get()
    async def health(self) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)


class MetricsController(Controller):
    path = "/metrics"

    @get()
    async def metrics(self, gw: Gateway) -> Response:
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


def _http_error(_request: Request, exc: HTTPException) -> Response:
    code = "500002"
    msg = exc.detail
    if exc.status_code == 404:
        msg = "not found"
    elif exc.status_code >= 500:
        code = "500003"
    return Response(error_body(code, str(msg)), status_code=exc.status_code, media_type=_JSON)


def _platform_error(_request: Request, exc: PlatformError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type=_JSON, headers=exc.headers())


def _internal_error(_request: Request, exc: Exception) -> Response:
    log.exception("internal error")  # the log gets the trace; the client never does
    return Response(error_body("500003", "system error"), status_code=500, media_type=_JSON)


def create_app(spec: GatewaySpec) -> Litestar:
    """Build the app; fails here (not on the first request) when the store or config is bad."""
    gw = Gateway(spec)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    return Litestar(
        route_handlers=[
            ChatController,
            CompletionsController,
            ModelsController,
            HealthController,
            MetricsController,
        ],
        dependencies={"gw": Provide(_gateway, sync_to_thread=False, use_cache=True)},
        middleware=[auth_middleware],
        exception_handlers={
            PlatformError: _platform_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        state=State({"gateway": gw}),
        lifespan=[lifespan],
        openapi_config=None,
        debug=False,
        logging_config=None,
    )
