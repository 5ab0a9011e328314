"""One line per request in the model server's log (`runner.log`, what `zsconf logs` shows):
time, method, path, status, duration. Health probes are left out (the gateway and the engine
poll them); streamed answers are logged when their last byte is sent. Written to stderr: stdout
carries the runner's JSON lines (`{"event": "ready", ...}`); the executor sends both to the log.

Used by `runners.serve.app` as an ASGI middleware (a plain callable: no per-request state on it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["access_log"]

_QUIET = ("/health", "/metrics")


def access_log(app: Any) -> Any:
    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in _QUIET:
            await app(scope, receive, send)
            return
        start = time.monotonic()
        status = 0

        async def logged_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, logged_send)
        finally:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            ms = (time.monotonic() - start) * 1000
            sys.stderr.write(f"{stamp} {scope['method']} {scope['path']} {status or '-'} {ms:.0f} ms\n")
            sys.stderr.flush()

    return middleware
