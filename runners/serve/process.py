"""Start a model server as a child process and wait for its ready line.

For tests and tools that need a running server (this package's tests, the gateway's tests, benches);
the executor has its own supervision but speaks the same protocol: argv
`[python, -m, runners.serve, SPEC.json]`, one JSON line `{"event": "ready", "port": P}` on stdout
(or `{"event": "error", "message": ...}` and exit 1), SIGTERM for a graceful stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["ServeProcess"]

REPO = Path(__file__).resolve().parent.parent.parent


class ServeProcess:
    """`python -m runners.serve SPEC.json` started and ready (or raising with its log)."""

    def __init__(
        self,
        spec: dict[str, Any],
        spec_path: Path,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.log_path = log_path or spec_path.with_suffix(".log")
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runners.serve", str(spec_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the ready line, an error line, or exit
        try:
            self.ready: dict[str, Any] = json.loads(line) if line else {"event": "exited"}
        except json.JSONDecodeError:
            self.ready = {"event": "garbled", "line": line}
        if self.ready.get("event") != "ready":
            self.stop()
            raise RuntimeError(
                f"server did not start: {self.ready}; log: {self.log_path.read_text()[-3000:]}"
            )
        self.port = int(self.ready["port"])
        self.url = f"http://{spec.get('host', '127.0.0.1')}:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (graceful: in-flight requests finish), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
