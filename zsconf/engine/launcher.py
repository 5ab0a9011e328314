"""Start, find, observe and stop runner processes by run id.

Called by `zsconf.engine.apply` and `zsconf.engine.refresh`. This is the engine's narrow boundary
to processes until `zsconf.executors` (another helper's interface) is wired in; it does the one
thing crash safety needs: every process carries `ZSCONF_RUN_ID` in its environment, so after a
`kill -9` of apply at any moment the engine finds (adopts) a process it started instead of
starting it twice. A process is identified by pid + start time (pid reuse safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessRef", "find_run", "is_alive", "start_run", "stop_process"]

RUN_ID_ENV = "ZSCONF_RUN_ID"


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: float


def process_start_time(pid: int) -> float | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: finished, not yet reaped
        return None
    return float(fields[19])


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


def start_run(
    run_id: str, module: str, spec_path: Path, workdir: Path, env: dict[str, str] | None = None
) -> ProcessRef:
    """`python -m MODULE SPEC.json` in its own session, log to workdir/runner.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[RUN_ID_ENV] = run_id
    with open(workdir / "runner.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(spec_path)],
            cwd=str(workdir),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st = None
    for _ in range(50):
        st = process_start_time(proc.pid)
        if st is not None:
            break
        time.sleep(0.01)
    ref = ProcessRef(proc.pid, st or 0.0)
    (workdir / "launch.json").write_text(json.dumps({"pid": ref.pid, "start_time": ref.start_time}))
    # The engine does not wait() on children (they outlive apply); a reaper thread avoids zombies
    # while this process lives.
    import threading

    threading.Thread(target=proc.wait, daemon=True).start()
    return ref


def stop_process(ref: ProcessRef, grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace` seconds."""
    if not is_alive(ref):
        return
    try:
        os.killpg(ref.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(ref):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ref.pid, signal.SIGKILL)
