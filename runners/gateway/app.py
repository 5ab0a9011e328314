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
import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Controller, Litestar, Request, Response, asgi, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.params import Dependency
from litestar.types import ASGIApp, Receive, Scope, Send

from runners.gateway.config import Table, load_table
from runners.gateway.errors import Code, PlatformError, error_body
from runners.gateway.imagefiles import ImageFiles
from runners.gateway.keycache import KeyCache
from runners.gateway.limits import Limiter
from runners.gateway.metering import Meter
from runners.gateway.metrics import Metrics
from runners.gateway.proxy import Proxy
from runners.gateway.upstream import Upstream

if TYPE_CHECKING:
    from schemas.run_gateway import GatewaySpec

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("runners.gateway")
_JSON = "application/json"
_PUBLIC = frozenset({"/health", "/metrics"})


class Gateway:
    """The shared services of one gateway process."""

    __slots__ = (
        "_last_check",
        "_tasks",
        "keys",
        "meter",
        "metrics",
        "proxy",
        "spec",
        "store",
        "table",
        "upstream",
    )

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
        self.proxy.images = ImageFiles(Path(spec.workdir) / "images", self.table.image_url_ttl_s)
        self._tasks: list[asyncio.Task] = []

    # -- config and keys -----------------------------------------------------------------------
    def reload(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.spec.config_path).st_mtime
            if force or mtime != self.table.mtime:
                self.table = load_table(self.spec.config_path, self.table)
                self.proxy.table = self.table
                self.proxy.images.ttl_s = self.table.image_url_ttl_s
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

    async def _loop_sweep(self) -> None:
        """Expired image files (response_format=url) are deleted once a minute."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.proxy.images.sweep)
            except Exception as exc:
                log.error("image sweep failed: %s", exc)
            await asyncio.sleep(60)

    async def start(self) -> None:
        await self.upstream.start()
        self._tasks = [
            asyncio.create_task(t)
            for t in (self._loop_config(), self._loop_keys(), self.meter.run(), self._loop_sweep())
        ]
        with contextlib.suppress(NotImplementedError, RuntimeError):
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload, True)
        # Everything built so far (modules, app, caches: ~110k objects) lives as long as the process;
        # frozen, the collector stops rescanning it. Measured under streaming load without this:
        # ~70 us of CPU per call in GC, mostly full collections walking those startup objects.
        gc.collect()
        gc.freeze()

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
    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any]:
        token = None
        for name, value in headers:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    token = value[7:].strip()
                break
        if not token:
            raise PlatformError(
                Code.INCORRECT_API_KEY_PROVIDED, "missing API key: send Authorization: Bearer <key>"
            )
        key = self.keys.get(token) or await self.keys.lookup(token)
        if key is None or key.revoked:
            raise PlatformError(Code.INCORRECT_API_KEY_PROVIDED, "incorrect API key provided")
        if key.banned:
            raise PlatformError(Code.AK_BANNED, "this API key is banned")
        group = self.table.groups.get((key.tenant, key.group))
        if group is None or not group.enabled:
            raise PlatformError(
                Code.INCORRECT_API_KEY_PROVIDED,
                f"service group {key.tenant}/{key.group} is disabled or absent",
            )
        return key, group


def auth_middleware(app: ASGIApp) -> ASGIApp:
    """Stateless: resolves the bearer key to (key, group) in `scope['zs_principal']` or answers
    with the platform error. /health and /metrics are public."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _PUBLIC:
            gw: Gateway = scope["app"].state.gateway
            try:
                scope["zs_principal"] = await gw.authenticate(scope["headers"])  # type: ignore[typeddict-unknown-key]
            except PlatformError as err:
                await _send_error(send, err)
                return
        await app(scope, receive, send)

    return middleware


async def _send_error(send: Send, err: PlatformError, status: int | None = None) -> None:
    body = err.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers().items()]
    await send({"type": "http.response.start", "status": status or err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The injected service is the app's own object: validating it per request (msgspec.convert of an
# arbitrary type) cost 16% of the gateway's CPU in a py-spy profile, so it is skipped.
GatewayDep = Annotated[Gateway, Dependency(skip_validation=True)]


def _gateway(state: State) -> Gateway:
    return state.gateway


_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _asgi_call(scope: Scope, receive: Receive, send: Send, kind: str) -> None:
    """The hot path as a raw ASGI handler: no signature model, no response conversion (a py-spy
    profile showed those at about a quarter of the gateway's CPU per call). The gateway comes from
    the app state; the principal from the auth middleware."""
    if scope["method"] != "POST":
        await _send_error(send, PlatformError(Code.PARAM_ERROR, "method not allowed: use POST"), 405)
        return
    gw: Gateway = scope["app"].state.gateway
    key, group = scope["zs_principal"]  # type: ignore[typeddict-item]
    body = b""
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    out = await gw.proxy.handle(key, group, body, kind, _base_url(scope) if kind == "image" else "")
    if isinstance(out, tuple):
        status, data, headers = out
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})
        return
    # A stream: relay chunk by chunk; a client that goes away cancels the relay (the relay's
    # `finally` meters what was generated and closes the upstream response).
    me = asyncio.current_task()
    more = True  # False once the last bytes are sent: the server then reports http.disconnect

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if me is not None and more:
            me.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        async for chunk, more_body in out:  # type: ignore[union-attr]
            if more:  # after the last bytes the relay only finishes (release, metering)
                await send({"type": "http.response.body", "body": chunk, "more_body": more_body})
                more = more_body
        if more:
            await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not watcher.done():
            raise
    finally:
        watcher.cancel()
        await out.aclose()  # type: ignore[attr-defined]


def _base_url(scope: Scope) -> str:
    """The gateway as the client reached it (scheme and Host header)."""
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


class ChatController(Controller):
    path = "/v1/chat/completions"

    @asgi(copy_scope=False)
    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _asgi_call(scope, receive, send, "chat")


class CompletionsController(Controller):
    path = "/v1/completions"

    @asgi(copy_scope=False)
    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _asgi_call(scope, receive, send, "completion")


class ImagesController(Controller):
    path = "/v1/images/generations"

    @asgi(copy_scope=False)
    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _asgi_call(scope, receive, send, "image")


class ImageFilesController(Controller):
    path = "/v1/images/files"

    @get("/{name:str}")
    async def fetch(self, request: Request, gw: GatewayDep, name: str) -> Response:
        key, _group = request.scope["zs_principal"]  # type: ignore[typeddict-item]
        path = gw.proxy.images.path(key.id, name)
        if path is None:
            return Response(
                error_body(Code.PARAM_ERROR, f"image {name!r} not found (or expired)"),
                status_code=404,
                media_type=_JSON,
            )
        data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        return Response(data, media_type="image/png")


class ModelsController(Controller):
    path = "/v1/models"

    @get()
    async def list_models(self, request: Request) -> Response:
        _key, group = request.scope["zs_principal"]  # type: ignore[typeddict-item]
        return Response(group.models_body, media_type=_JSON)


class HealthController(Controller):
    path = "/health"

    @get()
    async def health(self, gw: GatewayDep) -> Response:
        # config_mtime: the engine waits for it after rewriting the config, before it stops an
        # instance the old config routed to.
        return Response(json.dumps({"status": "ok", "config_mtime": gw.table.mtime}), media_type=_JSON)


class MetricsController(Controller):
    path = "/metrics"

    @get()
    async def metrics(self, gw: GatewayDep) -> Response:
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


def _http_error(_request: Request, exc: HTTPException) -> Response:
    code = Code.PARAM_ERROR
    msg = exc.detail
    if exc.status_code == 404:
        msg = "not found"
    elif exc.status_code >= 500:
        code = Code.SYSTEM_ERROR
    return Response(error_body(code, str(msg)), status_code=exc.status_code, media_type=_JSON)


def _platform_error(_request: Request, exc: PlatformError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type=_JSON, headers=exc.headers())


def _internal_error(_request: Request, exc: Exception) -> Response:
    log.exception("internal error")  # the log gets the trace; the client never does
    return Response(error_body(Code.SYSTEM_ERROR, "system error"), status_code=500, media_type=_JSON)


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
            ImagesController,
            ImageFilesController,
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
