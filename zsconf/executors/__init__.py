"""Executors: the boundary between the engine and processes (see `base.py` for the interface).

Called by `zsconf.engine` and the daemon: `get_executor("local", root=...)` returns the executor
whose bookkeeping lives under `root` (default `$ZSCONF_EXECUTOR_ROOT` or `~/.zsconf/executor`).
Importing this package is cheap: no torch, no HTTP client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zsconf.executors.base import (
    Capacity,
    Executor,
    InstanceHandle,
    InstanceRequest,
    JobRequest,
    Observation,
    ProcessHandle,
    Submission,
)

if TYPE_CHECKING:
    from zsconf.executors.local import LocalExecutor

__all__ = [
    "Capacity",
    "Executor",
    "InstanceHandle",
    "InstanceRequest",
    "JobRequest",
    "Observation",
    "ProcessHandle",
    "Submission",
    "get_executor",
    "host_cards",
]


def get_executor(name: str = "local", root: str | Path | None = None) -> LocalExecutor:
    """The executor called `name`; only "local" exists today."""
    if name != "local":
        from zsconf.errors import ExecutorError

        raise ExecutorError(f"unknown executor {name!r} (known: local)")
    from zsconf.executors.local import LocalExecutor

    return LocalExecutor(root=root)


def host_cards() -> int:
    """Accelerator cards of this host (0 on a CPU-only host); cheap, no torch."""
    from zsconf.executors.cards import detect_host_cards

    return detect_host_cards()[1]
