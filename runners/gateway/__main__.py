"""`python -m runners.gateway SPEC.json`: serve the gateway with uvicorn (httptools, uvloop if
installed) and print one ready JSON line `{"event": "ready", "url", "host", "port", "pid"}` (also
written to `workdir/ready.json`). SIGTERM/SIGINT: stop accepting, finish in-flight calls, flush
usage, exit 0. SIGHUP: reload the config file now.

Started by the engine (and by tests and bench/gateway.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runners.gateway SPEC.json", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("error: the gateway needs the [serve] extra (pip install 'zsconf[serve]')", file=sys.stderr)
        return 1
    from pydantic import ValidationError

    from schemas.run_gateway import GatewaySpec

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = GatewaySpec.model_validate_json(Path(args[0]).read_bytes())
    except (OSError, ValidationError) as exc:
        print(f"error: bad gateway spec {args[0]}: {exc}", file=sys.stderr)
        return 1
    from runners.gateway.app import create_app

    try:
        app = create_app(spec)
    except Exception as exc:  # bad store URL or config file: fail at startup, one line
        print(f"error: gateway cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

    sock = socket.socket(socket.AF_INET6 if ":" in spec.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((spec.host, spec.port))
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    try:
        import uvloop

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        app,
        loop=loop,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = uvicorn.Server(config)

    # uvicorn re-raises the signal it caught once it has shut down gracefully; with these no-op
    # handlers in place that re-raise is harmless and the process exits 0.
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            ready = {
                "event": "ready",
                "url": f"http://{spec.host}:{port}/v1",
                "host": spec.host,
                "port": port,
                "pid": os.getpid(),
            }
            wd = Path(spec.workdir)
            wd.mkdir(parents=True, exist_ok=True)
            tmp = wd / "ready.json.tmp"
            tmp.write_text(json.dumps(ready))
            tmp.replace(wd / "ready.json")
            print(json.dumps(ready), flush=True)
        await task

    if loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
