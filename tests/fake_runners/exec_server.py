"""Fake model server for executor tests (named as such): answers GET /health with 200 on
$ZSCONF_HOST:$ZSCONF_PORT; SIGTERM stops it after writing `WORKDIR/drained` (proves a graceful stop).
Usage: exec_server.py WORKDIR
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    workdir = Path(sys.argv[1])
    server = ThreadingHTTPServer(
        (os.environ.get("ZSCONF_HOST", "127.0.0.1"), int(os.environ["ZSCONF_PORT"])), Handler
    )

    def stop(*_: object) -> None:
        (workdir / "drained").write_text("yes")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
