"""Process identity and process-group signalling on Linux, read from /proc (psutil as fallback).

Called by `zsconf.executors.local`. A process is identified by pid + start time (field 22 of
/proc/PID/stat, clock ticks since boot), so a reused pid is never mistaken for our runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = [
    "find_leader",
    "group_pids",
    "is_alive",
    "kill_group",
    "pgid_of",
    "pid_running",
    "process_start_time",
]


def process_start_time(pid: int) -> float | None:
    """Start time of `pid` in clock ticks since boot; None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _psutil_start_time(pid)
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return float(fields[19])


def _psutil_start_time(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except psutil.Error:
        return None


def is_alive(pid: int, start_time: float) -> bool:
    return process_start_time(pid) == start_time


def pid_running(pid: int) -> bool:
    """Some process (not a zombie) has this pid; whichever it is (see `is_alive` for identity)."""
    return pid > 0 and process_start_time(pid) is not None


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def kill_group(pgid: int, grace_s: float) -> bool:
    """SIGTERM every process of the group, SIGKILL what is left after `grace_s`.

    Signalling the group (not the pid) reaches torchrun's workers and a server's children too.
    Returns True when SIGKILL was needed.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_pids(pgid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def find_leader(env_entry: str) -> tuple[int, float] | None:
    """(pid, start time) of a live process-group leader whose environment holds `env_entry`
    (e.g. "ZSCONF_RUN_ID=r-1"): finds a wrapper started just before a crash lost its record."""
    needle = env_entry.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and pgid_of(pid) == pid:
            st = process_start_time(pid)
            if st is not None:
                return pid, st
    return None
