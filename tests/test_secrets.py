"""`${secret:NAME}` in specs, end to end with real processes: the state and every printed plan
hold the value masked, a stack with secrets plans to "no changes" after apply, a rotated secret is
one in-place update, the runner's spec.json (mode 0600) and the webhook get the real value, and
the daemon does not re-apply a settled resource pass after pass.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import test_plan
from test_daemon_run import DaemonProc, cleanup, eventually, serving
from test_plan import make_stack

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH

STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
deployments:
  chat:
    model: base
    engine: embedded
    description: "owner ${secret:OWNER}"
    notify: {events: [healthy], webhook: "http://127.0.0.1:PORT/${secret:HOOK_PATH}"}
"""


def _zsconf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zsconf.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def _receiver() -> tuple[ThreadingHTTPServer, list[str]]:
    paths: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            paths.append(self.path)
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server, paths


def _state_bytes(stack: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (stack / ".zsconf").glob("state.db*"))


def test_secrets_settle_are_never_stored_and_reach_the_webhook(tmp_path: Path, engine_env: Path) -> None:
    from zsconf.engine import Engine

    server, paths = _receiver()
    stack = make_stack(tmp_path / "s", STACK.replace("PORT", str(server.server_address[1])))
    env = {**os.environ, "ZSCONF_SECRET_OWNER": "alice-s3cret-1", "ZSCONF_SECRET_HOOK_PATH": "hook-x9"}
    daemons: list[DaemonProc] = []
    try:
        applied = _zsconf("apply", str(stack), "--auto-approve", env=env)
        assert applied.returncode == 0, applied.stderr
        plan = _zsconf("plan", str(stack), "--detailed-exitcode", env=env)
        assert plan.returncode == 0, plan.stdout + plan.stderr  # settled: before the fix, 2 forever
        as_json = _zsconf("plan", str(stack), "--json", env=env)
        for out in (
            applied.stdout + applied.stderr,
            plan.stdout,
            as_json.stdout,
            _state_bytes(stack).decode("latin-1"),
        ):
            assert "alice-s3cret-1" not in out and "hook-x9" not in out
        # The runner got the value, in a file only its owner can read.
        (spec_path,) = (stack / ".zsconf").rglob("deployment/chat/*/spec.json")
        assert json.loads(spec_path.read_text())["spec"]["description"] == "owner alice-s3cret-1"
        assert stat.S_IMODE(spec_path.stat().st_mode) == 0o600

        # A rotated secret is one in-place update, shown masked, then settled again.
        env["ZSCONF_SECRET_OWNER"] = "alice-s3cret-2"
        changed = _zsconf("plan", str(stack), "--detailed-exitcode", env=env)
        assert changed.returncode == 2, changed.stdout + changed.stderr
        assert "~ deployment/acme/chat" in changed.stdout and "a secret's value changed" in changed.stdout
        assert (
            "alice-s3cret" not in changed.stdout and '"owner ********" -> "owner ********"' in changed.stdout
        )
        assert _zsconf("apply", str(stack), "--auto-approve", env=env).returncode == 0
        assert _zsconf("plan", str(stack), "--detailed-exitcode", env=env).returncode == 0
        assert b"alice-s3cret" not in _state_bytes(stack)

        # The daemon: the webhook is called at the real path; no update pass after pass.
        d = DaemonProc(stack, env=env)
        daemons.append(d)
        eng = Engine(stack)
        eventually(lambda: serving(eng.store, 1), what="the instance serving")
        d.wait_line("ready: first pass")
        updates = len(
            [e for e in eng.store.events(0, "deployment/acme/chat") if e.event == "updated in-place"]
        )
        time.sleep(7)  # two drift passes at --interval 3s
        after = [e for e in eng.store.events(0, "deployment/acme/chat") if e.event == "updated in-place"]
        assert len(after) == updates, [e.message for e in after]
        eventually(lambda: paths, 30, "a webhook POST")
        assert set(paths) == {"/hook-x9"}, paths
        eng.close()
    finally:
        server.shutdown()
        cleanup(daemons, stack)


def _unused(_: Any) -> None:
    _ = engine_env
