"""Fake model server (tests only): records its start, then serves until SIGTERM on ZSCONF_PORT.

Speaks just enough of the OpenAI API for the gateway and the engine's health checks: GET /health,
GET /v1/models, and POST /v1/chat/completions answering `echo: <last user message>` (non-streaming,
or SSE with `stream: true`). FAKE_DELAY (seconds) slows each answer, to keep calls in flight while
a test scales or upgrades the deployment. SIGTERM finishes in-flight calls first, like a real server.
While the file FAKE_SERVE_FAIL names holds this server's model name, it exits 3 at start (an
environment fault).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-serve"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # One call per connection: an idle keep-alive connection would hold shutdown open.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": NAME, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if KEY and self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "bad internal key"}})
            return
        time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
        text = "echo: " + str((body.get("messages") or [{}])[-1].get("content", ""))
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        base = {"id": "c-1", "created": int(time.time()), "model": body.get("model", NAME)}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._send(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece, finish in ((text, None), ("", "stop")):
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


NAME = "fake"
KEY = ""


def main() -> int:
    global NAME, KEY
    spec = json.loads(Path(sys.argv[1]).read_text())
    fail = Path(os.environ.get("FAKE_SERVE_FAIL") or "/nonexistent")
    if fail.exists() and fail.read_text().strip() == (spec.get("inputs") or {}).get("served_model_name"):
        print("fake-serve: told to fail", file=sys.stderr)
        return 3
    NAME = (spec.get("inputs") or {}).get("served_model_name") or "fake"
    KEY = os.environ.get("ZSCONF_SERVE_API_KEY", "")
    starts = os.environ.get("FAKE_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{spec['run_id']} {os.getpid()}\n")
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("ZSCONF_PORT") or 0)), _Handler)
    server.daemon_threads = False  # shutdown waits for in-flight calls
    server.block_on_close = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    (Path(spec["workdir"]) / "ready").write_text(str(server.server_address[1]))
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # joins the handler threads: in-flight answers complete
    return 0


if __name__ == "__main__":
    sys.exit(main())
