"""`python -m zsconf.executors.wrap WORKDIR -- ARGV...`: run ARGV, then write WORKDIR/exit_code.

Started by `zsconf.executors.local` as the session leader of every runner. A runner outlives the
executor that started it, so its exit status cannot be collected with wait() by a later executor;
this wrapper waits for it and writes `{"exit_code": N, "ended_at": T}` atomically (tmp + rename).
N is negative (-signal) when the runner died from a signal, as in `subprocess`.
With `ZSCONF_DIE_WITH=PID` (set by a Ray node actor, `zsconf.executors.ray_node`) the wrapper
and its whole process group die, leaving no exit code, as soon as PID is no longer its parent:
a process must not outlive the actor that holds its resources (a lost node, `ray.kill`).
Kept tiny: standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["main"]


def main(args: list[str]) -> int:
    workdir, sep, argv = args[0], args[1], args[2:]
    if sep != "--" or not argv:
        print("usage: python -m zsconf.executors.wrap WORKDIR -- ARGV...", file=sys.stderr)
        return 2
    # A cancel signals the whole process group: the runner gets SIGTERM itself; the wrapper stays
    # to record how it ended (a SIGKILL of the group takes both, and then no exit code is left).
    # Read what is pending first: setting a blocked signal to ignored discards it.
    early = bool({signal.SIGTERM, signal.SIGINT} & signal.sigpending())
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The executor starts us with SIGTERM blocked (see local._spawn), so a cancel that raced our
    # startup was pending: it is passed on to the runner as soon as the runner exists.
    # SIGHUP (the engine's "reload your config now" to the gateway) is meant for the runner: the
    # wrapper is the pid the executor knows, so it passes it on instead of dying of it.
    running: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGHUP, lambda *_: [p.send_signal(signal.SIGHUP) for p in running])
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    holder = os.environ.pop("ZSCONF_DIE_WITH", "")
    if holder.isdigit():
        threading.Thread(target=_die_with, args=(int(holder),), daemon=True).start()
    try:
        proc = subprocess.Popen(argv, restore_signals=True, preexec_fn=_default_signals)
        running.append(proc)
        if early:
            proc.terminate()
        code = proc.wait()
    except OSError as e:
        print(f"zsconf: cannot start {argv[0]}: {e}", file=sys.stderr, flush=True)
        code = 127
    tmp = os.path.join(workdir, f".exit_code.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"exit_code": code, "ended_at": time.time()}, f)
    os.replace(tmp, os.path.join(workdir, "exit_code"))
    # Leave no strays: whatever the runner started in this group (torchrun workers, a server's
    # helpers) ends with it. The wrapper ignores SIGTERM, so this does not stop it.
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGTERM)
    return 0


def _die_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the runner, its workers and this wrapper


def _default_signals() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
