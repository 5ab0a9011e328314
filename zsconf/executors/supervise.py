"""Job and instance supervision rules, called by the daemon (and `zsconf apply --wait`) each pass.

Policy lives here, bookkeeping in the engine: `should_restart` decides from plain numbers the
engine keeps in its runs table; `enforce_auto_stop` and `ensure_instances` act through an executor.
A restarted job gets a new run id from the engine with `"resume": true` in its spec, so the runner
continues from its latest checkpoint in `workdir/checkpoints/` (the same workdir is fine: the
executor removes the previous attempt's `exit_code` file before starting).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.executors.base import Executor, InstanceHandle, InstanceRequest, Observation

if TYPE_CHECKING:
    from zsconf.executors.base import Executor

__all__ = [
    "UNCONDITIONAL_MAX_IN_A_ROW",
    "enforce_auto_stop",
    "ensure_instances",
    "is_environment_fault",
    "latest_checkpoint",
    "should_restart",
]

# The platform's unconditional mode restarts on any failure, but at most 3 times in a row.
UNCONDITIONAL_MAX_IN_A_ROW = 3


def is_environment_fault(exit_code: int | None) -> bool:
    """A crash, a signal or a lost process (exit code not 0 or 1): retryable. 1 = user/data error."""
    return exit_code not in (0, 1)


def _get(policy: Any, name: str, default: Any) -> Any:
    if isinstance(policy, dict):
        return policy.get(name, default)
    return getattr(policy, name, default)


def should_restart(exit_code: int | None, attempts: int, consecutive_failures: int, policy: Any) -> bool:
    """Whether a job that just ended with `exit_code` is started again.

    `policy` is `schemas.jobs.AutoRestart` (or a dict with its fields: enabled, max_restarts,
    unconditional). `attempts` = restarts already made for this job (not counting the first run);
    `consecutive_failures` = failed attempts in a row, this one included (the engine resets it
    when an attempt wrote a new checkpoint, i.e. made progress). `exit_code` None = the process
    was lost (counts as an environment fault). Rules (manual, auto-restart): at most
    `max_restarts` restarts; normally only environment faults restart; unconditional mode also
    restarts user failures (exit 1) but never more than 3 times in a row. Call it for runs that
    ended `failed` or `lost` only: a `stopped` run (cancel, auto-stop) is never restarted.
    """
    if exit_code == 0 or not _get(policy, "enabled", True):
        return False
    if attempts >= int(_get(policy, "max_restarts", 3)):
        return False
    if _get(policy, "unconditional", False):
        return consecutive_failures <= UNCONDITIONAL_MAX_IN_A_ROW
    return is_environment_fault(exit_code)


def latest_checkpoint(workdir: str | Path) -> Path | None:
    """The newest checkpoint folder under `workdir/checkpoints/` (highest trailing step number,
    e.g. `checkpoint-120`; else the newest by time), None when there is none. Shown by
    `zsconf job checkpoints` and recorded by the engine before a restart with `resume: true`."""
    root = Path(workdir) / "checkpoints"
    try:
        dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return None
    if not dirs:
        return None

    def key(d: Path) -> tuple[int, float]:
        m = re.search(r"(\d+)$", d.name)
        return (int(m.group(1)) if m else -1, d.stat().st_mtime)

    return max(dirs, key=key)


def enforce_auto_stop(
    executor: Executor,
    run_id: str,
    max_seconds: float | None,
    grace_s: float = 10.0,
    now: float | None = None,
) -> Observation | None:
    """Cancel a run that has been running longer than `max_seconds` (the spec's auto_stop).

    Returns the observation after the stop, or None when nothing was done. Queued time does not
    count: the clock starts when the process starts.
    """
    if not max_seconds:
        return None
    obs = executor.observe(run_id)
    if obs.state != "running" or obs.started_at is None:
        return None
    if (now or time.time()) - obs.started_at < max_seconds:
        return None
    return executor.cancel(run_id, grace_s=grace_s, reason=f"auto_stop: ran longer than {max_seconds:g} s")


def ensure_instances(
    executor: Executor,
    current: Sequence[InstanceHandle],
    want: int,
    make_request: Callable[[int], InstanceRequest],
    grace_s: float = 10.0,
) -> list[InstanceHandle]:
    """Make `want` live instances out of `current`: dead ones are started again (same index, new
    port), surplus ones (highest index first) are stopped, missing indexes are started.

    Returns the handles now in use, by index. Does not wait for health: callers that must not
    drop traffic (rolling upgrade, scale down) wait with `executor.wait_healthy` before routing
    to a new instance and remove an old one from routing before stopping it.
    """
    by_index = {h.index: h for h in current}
    out: list[InstanceHandle] = []
    for index in sorted(by_index):
        h = by_index[index]
        if index >= want:
            executor.stop_instance(h, grace_s=grace_s)
        elif executor.instance_alive(h):
            out.append(h)
        else:
            out.append(executor.start_instance(make_request(index)))
    for index in range(want):
        if index not in by_index:
            out.append(executor.start_instance(make_request(index)))
    return sorted(out, key=lambda h: h.index)
