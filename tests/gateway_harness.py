"""Real-process harness for the gateway tests and bench/gateway.py: start stub upstreams and the
gateway as subprocesses on free loopback ports, write its config, create keys in a real state store.

Every process started here runs in its own session and is stopped by its pid (`stop`), so a test
leaves no orphan.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "stub_upstream.py"

__all__ = ["GatewayEnv", "Proc", "start_stub"]


class Proc:
    """A child process that prints one ready JSON line on stdout."""

    def __init__(self, argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.err = ""
        self.p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.ready = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], 0.1)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.splitlines():
                    if line.startswith(b"{") and b'"ready"' in line:
                        return json.loads(line)
            elif self.p.poll() is not None:
                break
        err = self.p.stderr.read1(20000).decode(errors="replace") if self.p.poll() is not None else ""
        self.kill()
        raise RuntimeError(f"{self.argv} did not become ready: {buf.decode(errors='replace')} {err}")

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.p.stderr and not self.p.stderr.closed:
            self.err = self.p.stderr.read().decode(errors="replace")
        for f in (self.p.stdout, self.p.stderr):
            if f:
                f.close()
        return self.p.returncode

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)

    def stderr_text(self) -> str:
        """stderr of a stopped process."""
        return self.err


def start_stub(*flags: str, ident: str = "stub") -> Proc:
    return Proc([sys.executable, str(STUB), "--port", "0", "--id", ident, *flags])


class GatewayEnv:
    """A state store, a config file and a gateway process in `root`."""

    def __init__(self, root: Path, state_url: str | None = None) -> None:
        from zsconf.state import open_store

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state_url = state_url or f"sqlite:///{root / 'state.db'}"
        self.store = open_store(self.state_url)
        self.config_path = root / "gateway.json"
        self.config: dict[str, Any] = {
            "version": 1,
            "upstream_api_key": None,
            "deployments": [],
            "groups": [],
        }
        self.gateway: Proc | None = None

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        tmp.replace(self.config_path)

    def add_key(self, tenant: str, group: str, banned: bool = False) -> tuple[str, str]:
        from zsconf.keys import generate_key
        from zsconf.state import ApiKey

        secret, key_id, prefix, digest = generate_key()
        self.store.add_api_key(
            ApiKey(id=key_id, tenant=tenant, group=group, key_hash=digest, prefix=prefix, banned=banned)
        )
        return secret, key_id

    def start(self, **spec: Any) -> Proc:
        self.write_config()
        body = {
            "host": "127.0.0.1",
            "port": 0,
            "state_url": self.state_url,
            "config_path": str(self.config_path),
            "workdir": str(self.root / "gw"),
            **spec,
        }
        spec_path = self.root / "spec.json"
        spec_path.write_text(json.dumps(body))
        self.gateway = Proc([sys.executable, "-m", "runners.gateway", str(spec_path)])
        return self.gateway

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.port}/v1"

    def usage(self) -> list[Any]:
        from sqlmodel import select as sql_select

        from zsconf.state import UsageRecord

        with self.store.session() as s:
            return list(s.exec(sql_select(UsageRecord).order_by(UsageRecord.id)).all())

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.store.close()
