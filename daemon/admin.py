"""The daemon's admin API: statuses, events, runs and their logs, the current plan, trigger a sync.

Called by `daemon.main` (helper B): `AdminServer(view, host, port, admin_token(stack)).start()`,
then `write_discovery(stack, {...,"admin_url": server.url})`; on shutdown `server.stop()` and
`remove_discovery(stack, os.getpid())`. Read by `zsconf.cli.admin_client` (the CLI's `status`,
`events`, `logs`), which finds the daemon through `<stack>/.zsconf/daemon.json`.

Every route needs `Authorization: Bearer <token>` (the token in `<stack>/.zsconf/admin.token`,
mode 0600, created once) or a web-console session signed with it (`daemon.console.gate`): this
API is for the operator, separate from the gateway's `/v1` keys. The same server serves the
console's pages under `/console/` (`daemon.console.pages`).
Routes (JSON):

    GET  /api/health                          {"ok": true, "pid", "leader", "stack_dir"}
    GET  /api/status                          {"leader", "statuses": [{address, sync, health,
                                               reason, since}]} as the daemon last recorded them
    GET  /api/resources?address=              {"resources": [resource row as JSON + "axes" (the
                                               recorded status) + "last_run" (+ "versions" for
                                               a model)]}; 404 for an unknown address
    GET  /api/events?since=ID&address=&wait=S {"events": [{id, ts, address, event, message,
                                               data}], "last_id": the cursor for the next call};
                                               waits up to S s (max 30) for
                                               an event with id > ID when there is none yet;
                                               also since_ts=EPOCH, tail=N (newest N), limit
    GET  /api/runs?address=                   {"runs": [RunRow as JSON]}
    GET  /api/runs/{run_id}/log?offset=N&wait=S
                                              {"data": text of runner.log from byte N (at most
                                               1 MB; N < 0 = the last -N bytes), "offset": next N,
                                               "size", "status": the run's status, "finished"};
                                               waits up to S s (max 30) when nothing is new
    GET  /api/plan                            the daemon's last plan (zsconf.render's plan JSON);
                                              404 before the first plan
    POST /api/sync                            202 {"ok": true}: a reconcile pass starts now

Errors are `{"error": "..."}` with the HTTP status (401 without a valid token, 404 unknown run).
Store reads run in worker threads (SQLAlchemy is synchronous); waits poll the store every 0.15 s
(events can come from other processes, e.g. a `zsconf apply`, so there is nothing to subscribe to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from daemon.records import event_dict, newest_event_id, query_events, read_log
from zsconf.names import FINISHED_RUN

if TYPE_CHECKING:
    from litestar import Litestar

    from zsconf.plans import Plan
    from zsconf.state import Store

__all__ = [
    "AdminServer",
    "DaemonView",
    "admin_token",
    "create_app",
    "discovery_path",
    "read_discovery",
    "remove_discovery",
    "resource_details",
    "token_path",
    "write_discovery",
]

log = logging.getLogger("daemon.admin")

MAX_WAIT_S = 30.0
POLL_S = 0.15


class DaemonView(Protocol):
    """What the admin API needs from the running daemon (helper B implements it)."""

    stack_dir: Path
    store: Store

    def current_plan(self) -> Plan | None: ...

    def trigger_sync(self, reason: str) -> None: ...

    def is_leader(self) -> bool: ...


# -- files under <stack>/.zsconf ----------------------------------------------------------------
def _zsconf_dir(stack_dir: str | Path) -> Path:
    d = Path(stack_dir).resolve() / ".zsconf"
    d.mkdir(parents=True, exist_ok=True)
    return d


def token_path(stack_dir: str | Path) -> Path:
    return Path(stack_dir).resolve() / ".zsconf" / "admin.token"


def discovery_path(stack_dir: str | Path) -> Path:
    return Path(stack_dir).resolve() / ".zsconf" / "daemon.json"


def admin_token(stack_dir: str | Path) -> str:
    """The admin API's bearer token: read from `.zsconf/admin.token`, or created there once (mode
    0600). Created complete in a temporary file and hard-linked into place, so two daemons
    starting together agree on one token and nobody reads a half-written file."""
    path = _zsconf_dir(stack_dir) / "admin.token"
    if not path.exists():
        tmp = path.with_name(f".admin.token.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process won: use its token
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:  # someone loosened it: the token is a credential
        path.chmod(0o600)
    return path.read_text().strip()


def write_discovery(stack_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write `.zsconf/daemon.json` atomically (tmp + rename): {"pid", "start_time", "admin_url",
    "leader", "started_at"}; start_time as zsconf.executors.procs.process_start_time(pid)."""
    path = _zsconf_dir(stack_dir) / "daemon.json"
    tmp = path.with_name(f".daemon.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)
    return path


def read_discovery(stack_dir: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads(discovery_path(stack_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_discovery(stack_dir: str | Path, pid: int | None = None) -> None:
    """Remove `.zsconf/daemon.json`; with `pid`, only when that process wrote it (a standby
    daemon stopping must not hide the leader)."""
    path = discovery_path(stack_dir)
    if pid is not None:
        info = read_discovery(stack_dir)
        if info is not None and info.get("pid") != pid:
            return
    path.unlink(missing_ok=True)


# -- the app -------------------------------------------------------------------------------------
def _error(status: int, message: str) -> Any:
    from litestar import Response

    return Response({"error": message}, status_code=status)


def _wait_s(value: float | None) -> float:
    return max(0.0, min(float(value or 0.0), MAX_WAIT_S))


def resource_details(store: Store, address: str | None = None) -> list[dict[str, Any]]:
    """Resource rows as JSON (what `zsconf show` prints), each with its recorded status axes
    (`axes`: sync, health, reason, since; None before the daemon's first pass), its last run and,
    for a model, its versions."""
    from daemon.status import read_statuses

    rows = store.resources()
    axes = read_statuses(store)
    out = []
    for addr in [address] if address else sorted(rows):
        row = rows.get(addr)
        if row is None:
            continue
        d = row.model_dump(mode="json")
        d["axes"] = axes[addr].as_dict() if addr in axes else None
        last = store.last_run(addr)
        d["last_run"] = last.model_dump(mode="json") if last else None
        if row.kind == "model":
            d["versions"] = [v.model_dump(mode="json") for v in store.model_versions(row.tenant, row.name)]
        out.append(d)
    return out


def create_app(
    view: DaemonView, stopping: threading.Event | None = None, token: str = "", port: int = 0
) -> Litestar:
    """The Litestar app (the API and the web console), without auth: `AdminServer` serves it
    behind `daemon.console.gate.guard` (the check runs before routing, so unknown paths need the
    token too). `stopping` set = waits end. `token` and `port` sign the console's sessions."""
    import anyio
    from litestar import Litestar, Request, get, post
    from litestar.params import FromPath, FromQuery
    from litestar.static_files import create_static_files_router

    from daemon.console import pages

    stop = stopping or threading.Event()
    store = view.store

    async def off_thread(fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def sleep_or_stop(deadline: float) -> bool:
        """Sleep one poll step; False once the wait is over (deadline or server stopping)."""
        if stop.is_set() or time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return not stop.is_set()

    @get("/api/health")
    async def health() -> dict[str, Any]:
        leader = await off_thread(view.is_leader)
        return {"ok": True, "pid": os.getpid(), "leader": leader, "stack_dir": str(view.stack_dir)}

    @get("/api/status")
    async def status() -> dict[str, Any]:
        from daemon.status import read_statuses

        rows = await off_thread(read_statuses, store)
        leader = await off_thread(view.is_leader)
        return {"leader": leader, "statuses": [s.as_dict() for s in rows.values()]}

    @get("/api/resources")
    async def resources(address: FromQuery[str | None] = None) -> Any:
        found = await off_thread(resource_details, store, address)
        if address and not found:
            return _error(404, f"no resource {address!r} in the state")
        return {"resources": found}

    @get("/api/events")
    async def events(
        since: FromQuery[int] = 0,
        address: FromQuery[str | None] = None,
        wait: FromQuery[float] = 0.0,
        limit: FromQuery[int] = 1000,
        since_ts: FromQuery[float | None] = None,
        tail: FromQuery[int | None] = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + _wait_s(wait)
        while True:
            # Read before the query: when nothing matches, the cursor moves past what was there
            # (those events can never match later), so a follower never re-reads old history.
            newest = await off_thread(newest_event_id, store)
            found = await off_thread(lambda: query_events(store, since, address, since_ts, tail, limit))
            if found or not await sleep_or_stop(deadline):
                break
        last = found[-1].id if found else max(since, newest)
        return {"events": [event_dict(e) for e in found], "last_id": last}

    @get("/api/runs")
    async def runs(address: FromQuery[str | None] = None) -> dict[str, Any]:
        found = await off_thread(store.runs, address)
        return {"runs": [r.model_dump(mode="json") for r in found]}

    @get("/api/runs/{run_id:str}/log")
    async def run_log(run_id: FromPath[str], offset: FromQuery[int] = 0, wait: FromQuery[float] = 0.0) -> Any:
        run = await off_thread(store.run, run_id)
        if run is None:
            return _error(404, f"no run {run_id!r} (see GET /api/runs)")
        deadline = time.monotonic() + _wait_s(wait)
        while True:
            text, nxt, size = await off_thread(read_log, run.workdir, offset)
            finished = run.status in FINISHED_RUN
            if text or finished or not await sleep_or_stop(deadline):
                break
            run = await off_thread(store.run, run_id) or run
        return {"data": text, "offset": nxt, "size": size, "status": run.status,
                "finished": run.status in FINISHED_RUN and nxt >= size}  # fmt: skip

    @get("/api/plan")
    async def plan() -> Any:
        p = await off_thread(view.current_plan)
        if p is None:
            return _error(404, "the daemon has not made a plan yet")
        return p.as_dict()

    @post("/api/sync", status_code=202)
    async def sync(reason: FromQuery[str] = "requested through the admin API") -> dict[str, Any]:
        await off_thread(view.trigger_sync, reason)
        return {"ok": True}

    from daemon.console.session import cookie_name

    console = pages.handlers(view, stop, token, cookie_name(port))
    static = create_static_files_router(path="/console/static", directories=[pages.STATIC_DIR],
                                        include_in_schema=False)  # fmt: skip
    return Litestar(
        route_handlers=[health, status, resources, events, runs, run_log, plan, sync, *console, static],
        # The handlers' annotations are strings (PEP 563) naming these lazily imported types.
        signature_namespace={"FromPath": FromPath, "FromQuery": FromQuery, "Any": Any, "Request": Request},
        openapi_config=None,
        logging_config=None,  # the daemon owns logging; Litestar's default would reconfigure it
        debug=False,
    )


class AdminServer:
    """uvicorn serving the admin app in a background thread. `port` 0 = a free port."""

    def __init__(self, view: DaemonView, host: str = "127.0.0.1", port: int = 0, token: str = "") -> None:
        if not token:
            raise ValueError("AdminServer needs a token (daemon.admin.admin_token(stack_dir))")
        self.view = view
        self.host = host
        self.port = port
        self._token = token
        self._stopping = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> AdminServer:
        import uvicorn

        from daemon.console.gate import guard
        from daemon.console.pages import login_html

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        token = self._token
        app = guard(create_app(self.view, self._stopping, token, self.port), token, self.port,
                    lambda scope: login_html(scope, token))  # fmt: skip
        config = uvicorn.Config(
            app, lifespan="on", access_log=False, log_level="warning", timeout_graceful_shutdown=5
        )  # fmt: skip
        self._server = uvicorn.Server(config)

        def serve() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start() or stop()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name="zsconf-admin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"admin API did not start on {self.url}: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: waiting long-polls return at once, in-flight requests finish, then exit."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
