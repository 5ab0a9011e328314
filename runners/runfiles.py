"""Run-directory files of a runner (CONTRACTS.md §2): events.jsonl, metrics.jsonl, result.json.

Shared by every job runner (train, compress, evaluate, validate). result.json is written last and
atomically (tmp + rename) so the engine never reads half a result.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["RunFiles", "UserError", "quiet_progress_bars"]


def quiet_progress_bars() -> None:
    """No tqdm bars when the output is a log file (runner.log, which `zsconf logs` shows): they
    are carriage-return redraws there, not lines. TQDM_DISABLE (set by the executor) covers bars
    left at their default; libraries that pass `disable=False` themselves (compressed-tensors'
    "Applying quantization config") are overridden here. A terminal keeps its bars."""
    import sys

    if sys.stderr.isatty():
        return
    try:
        from tqdm import std
    except ImportError:
        return
    init = std.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]


class UserError(Exception):
    """A failure caused by the user's spec or data (exit code 1: do not retry)."""


class RunFiles:
    """Appends events/metrics and writes the final result of one run."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.workdir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def event(self, event: str, message: str) -> None:
        self._append("events.jsonl", {"ts": time.time(), "event": event, "message": message})
        print(f"[{event}] {message}", flush=True)

    def metric(self, **values: Any) -> None:
        self._append("metrics.jsonl", {"ts": time.time(), **values})

    def result(self, status: str, outputs: dict[str, Any] | None = None, error: str | None = None) -> None:
        payload = {"status": status, "error": error, "outputs": outputs or {}}
        tmp = self.workdir / "result.json.tmp"
        tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
        os.replace(tmp, self.workdir / "result.json")
