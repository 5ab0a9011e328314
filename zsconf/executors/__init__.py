"""Executors: the boundary between the engine and processes (see `base.py` for the interface).

Called by `zsconf.engine` and the daemon: `executor_for(stack_dir, platform)` returns the one
the stack's `platform.executor` names (local, or ray), its bookkeeping under
`$ZSCONF_EXECUTOR_ROOT` or `<stack>/.zsconf/executor`; `default_executor(stack_dir)` reads the
platform from the stack's files first. Importing this package is cheap: no torch,
no HTTP client, no ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "executor_for",
    "get_executor",
    "host_cards",
    "should_restart",
]


def get_executor(name: str = "local", root: str | Path | None = None) -> LocalExecutor:
    """The local executor under `root` (the Ray one needs its platform: `default_executor`)."""
    if name != "local":
        from zsconf.errors import ExecutorError

        raise ExecutorError(f"unknown executor {name!r} (known: local; ray comes from the stack's platform)")
    from zsconf.executors.local import LocalExecutor

    return LocalExecutor(root=root)


def default_executor(stack_dir: str | Path) -> LocalExecutor:
    """The executor the stack's files name (local when they do not load): `executor_for`."""
    return executor_for(stack_dir, _stack_platform(Path(stack_dir)))


def executor_for(stack_dir: str | Path, platform: Any) -> LocalExecutor:
    """The executor `platform.executor` names (local for None), its bookkeeping under
    $ZSCONF_EXECUTOR_ROOT or <stack>/.zsconf/executor, so the CLI and the daemon of one stack
    share one queue (and a stack moved to a cluster still sees the runs it started locally)."""
    import os

    root = os.environ.get("ZSCONF_EXECUTOR_ROOT") or Path(stack_dir) / ".zsconf" / "executor"
    spec = getattr(platform, "executor", None)
    if spec is None or spec.kind == "local":
        return get_executor("local", root=root)
    from zsconf.executors.local import _safe
    from zsconf.executors.ray_cluster import RayExecutor

    namespace = spec.namespace or f"zsconf-{_safe(Path(stack_dir).resolve().name)}"
    return RayExecutor(root, address=spec.address, namespace=namespace)


def _stack_platform(stack_dir: Path) -> Any:
    from zsconf.errors import ZsconfError
    from zsconf.loading import load_stack

    try:
        return load_stack(stack_dir).stack.platform
    except ZsconfError:
        return None


def host_cards() -> int | None:
    """Accelerator cards of this host; None on a CPU-only host, where the local executor does not
    count cards (every job runs at once on the CPU). Cheap: no torch."""
    from zsconf.executors.cards import detect_host_cards

    device, count = detect_host_cards()
    return None if device == "cpu" else count
