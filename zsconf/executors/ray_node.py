"""What zsconf runs on a Ray node: one actor per process (a rank of a job, or a server instance).

`zsconf.executors.ray_cluster.RayExecutor` creates a `NodeProcess` as a detached, named actor
pinned to the node it chose. The actor holds that node's resources (cards, CPUs, memory) while it
lives; Ray sets its CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, and the process inherits
them. The process is started exactly as the local executor starts one (`spawn_wrapped`: wrapper,
own session, `exit_code` and `runner.log` in the run folder), with one addition: it dies with the
actor (`ZSCONF_DIE_WITH`), so a lost node or a `ray.kill` never leaves a process holding cards Ray
has handed to someone else.

Nodes run the same image as the control host: zsconf and its engine environments at the same
paths, and `platform.storage` mounted at the same place (checked here before anything starts).
Standard library and ray only; ray is imported inside methods (this module is imported on nodes).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["NodeProcess", "unseen"]


def unseen(paths: list[str]) -> list[str]:
    """The paths of `paths` this node cannot see."""
    return [p for p in paths if not os.path.exists(p)]


class NodeProcess:
    """One process on the node Ray placed this actor on."""

    def __init__(self) -> None:
        self.proc: Any = None

    def where(self) -> dict[str, Any]:
        """The node this actor runs on: its address, Ray node id and host name."""
        import ray

        return {
            "ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
        }

    def free_port(self) -> int:
        """A port free on this node now (a server's, or a process group's rendezvous)."""
        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((ray.util.get_node_ip_address(), 0))
            return int(s.getsockname()[1])

    def start(
        self, argv: list[str], workdir: str, env: dict[str, str], run_id: str, status_dir: str | None
    ) -> dict[str, Any]:
        """Start the process (once); its pid, start time and when it started."""
        from zsconf.executors.local import spawn_wrapped

        if self.proc is None:
            missing = unseen([workdir, argv[0]] if os.path.isabs(argv[0]) else [workdir])
            if missing:
                where = self.where()
                raise RuntimeError(
                    f"node {where['hostname']} ({where['ip']}) cannot see {', '.join(missing)}: every node "
                    "must mount platform.storage and have zsconf's environments at the same paths"
                )
            env = {**env, "ZSCONF_DIE_WITH": str(os.getpid())}
            status = Path(status_dir) if status_dir else None
            self.proc, self.start_time = spawn_wrapped(argv, Path(workdir), env, run_id, status)
            self.started_at = time.time()
        return {"pid": self.proc.pid, "start_time": self.start_time, "started_at": self.started_at}

    def info(self) -> dict[str, Any] | None:
        """What `start` returned, while the process runs; None before it starts and after it ends."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return {"pid": self.proc.pid, "start_time": self.start_time, "started_at": self.started_at}

    def poll(self) -> int | None:
        """None while the process runs, else the wrapper's exit status."""
        return None if self.proc is None else self.proc.poll()

    def terminate(self, grace_s: float) -> None:
        """SIGTERM the process group (a runner checkpoints, a server drains), SIGKILL after grace."""
        from zsconf.executors.procs import kill_group

        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc.pid, grace_s)
            self.proc.wait()
