"""Find a runner process by its run id (crash-safety fallback beside the executor's records).

Called by `zsconf.engine.apply`. The executor starts every process with `ZSCONF_RUN_ID` in its
environment; if apply is killed after the process started but before anyone recorded it, the
engine finds it here and hands it to `Executor.adopt` instead of starting it twice. A process is
identified by pid + start time (pid reuse safe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zsconf.executors.procs import process_start_time

__all__ = ["ProcessRef", "find_run", "is_alive"]

RUN_ID_ENV = "ZSCONF_RUN_ID"


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: float


def is_alive(ref: ProcessRef) -> bool:
    return process_start_time(ref.pid) == ref.start_time


def find_run(run_id: str) -> ProcessRef | None:
    """The live process started for `run_id`, found by its environment (adoption after a crash)."""
    needle = f"{RUN_ID_ENV}={run_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pid = int(entry)
            st = process_start_time(pid)
            if st is not None:
                return ProcessRef(pid, st)
    return None
