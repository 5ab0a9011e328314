"""The daemon's debounced watcher and webhook notifier, with real files and a real HTTP receiver."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from daemon.notify import Notifier
from daemon.watch import StackWatcher


def test_edit_wakes_watcher_once_after_debounce(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text("tenants: {}\n")
    watcher = StackWatcher(tmp_path, debounce_s=0.2).start()
    try:
        assert watcher.wait(0.3) is False
        for i in range(5):  # a burst of writes is one change
            stack.write_text(f"tenants: {{a{i}: {{}}}}\n")
            time.sleep(0.02)
        assert watcher.wait(3) is True
        assert watcher.wait(0.4) is False
    finally:
        watcher.stop()


def test_write_temp_then_rename_is_seen(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text("tenants: {}\n")
    watcher = StackWatcher(tmp_path, debounce_s=0.1).start()
    try:
        tmp = tmp_path / ".stack.yaml.swp"
        tmp.write_text("tenants: {b: {}}\n")
        os.replace(tmp, stack)  # what vim/VS Code/atomic writers do
        assert watcher.wait(3) is True
    finally:
        watcher.stop()


def test_state_dir_and_unrelated_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".zsconf").mkdir()
    watcher = StackWatcher(tmp_path, debounce_s=0.1).start()
    try:
        (tmp_path / ".zsconf" / "state.yaml").write_text("x")
        (tmp_path / "notes.md").write_text("x")
        (tmp_path / "stack.yaml~").write_text("x")
        assert watcher.wait(0.5) is False
        (tmp_path / "datasets").mkdir()
        (tmp_path / "datasets" / "d.jsonl").write_text("{}\n")
        assert watcher.wait(3) is True
    finally:
        watcher.stop()


def test_notifier_retries_until_receiver_accepts() -> None:
    got: list[dict] = []
    failures = {"left": 2}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures["left"] > 0:
                failures["left"] -= 1
                self.send_response(503)
            else:
                got.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    notifier = Notifier(retries=4, base_delay_s=0.05)
    try:
        notifier.send(f"http://127.0.0.1:{server.server_port}/hook", {"event": "completed", "address": "x"})
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [{"event": "completed", "address": "x"}]
    finally:
        notifier.close()
        server.shutdown()


def test_hanging_receiver_never_blocks_send() -> None:
    """send() returns while a delivery is stuck in the receiver: the reconcile path never waits."""
    release = threading.Event()
    entered = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            entered.set()
            release.wait(10)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    notifier = Notifier(retries=0, timeout_s=10)
    url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        notifier.send(url, {"event": "failed"})
        assert entered.wait(5)
        for _ in range(20):  # the first delivery is still hanging in the receiver
            notifier.send(url, {"event": "failed"})
        assert not release.is_set()
    finally:
        release.set()
        notifier.close(timeout_s=1)
        server.shutdown()
