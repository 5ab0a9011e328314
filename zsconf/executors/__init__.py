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
from zsconf.executors.supervise import enforce_auto_stop, ensure_instances, should_restart

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
    "default_executor",
    "enforce_auto_stop",
    "ensure_instances",
    "get_executor",
    "host_cards",
    "should_restart",
]


def get_executor(name: str = "local", root: str | Path | None = None) -> LocalExecutor:
    """The executor called `name`; only "local" exists today."""
    if name != "local":
        from zsconf.errors import ExecutorError

        raise ExecutorError(f"unknown executor {name!r} (known: local)")
    from zsconf.executors.local import LocalExecutor

    return LocalExecutor(root=root)


def default_executor(stack_dir: str | Path) -> LocalExecutor:
    """The stack's local executor, its bookkeeping under $ZSCONF_EXECUTOR_ROOT or
    <stack>/.zsconf/executor (so the CLI and the daemon of one stack share one queue)."""
    import os

    root = os.environ.get("ZSCONF_EXECUTOR_ROOT") or Path(stack_dir) / ".zsconf" / "executor"
    return get_executor("local", root=root)


def host_cards() -> int | None:
    """Accelerator cards of this host; None on a CPU-only host, where the local executor does not
    count cards (every job runs at once on the CPU). Cheap: no torch."""
    from zsconf.executors.cards import detect_host_cards

    device, count = detect_host_cards()
    return None if device == "cpu" else count
