"""The executor interface: the narrow boundary between the engine and running processes.

Called by `zsconf.engine` (apply submits and cancels, refresh observes and adopts) and by the
daemon (supervision: restarts, auto-stop, deployment instances). Implemented by
`zsconf.executors.local.LocalExecutor` (this host) and `zsconf.executors.ray_cluster.RayExecutor`
(a Ray cluster).

Everything crossing this boundary is a plain value (dataclasses of str/int/float/list/dict), in the
spirit of httpx's transport: the engine never sees a `Popen`, and the executor never sees the
state store. Handles are serialisable (`as_dict` / `from_dict`) so the engine keeps them in its
runs table and hands them back after a restart (`adopt`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Capacity",
    "Executor",
    "InstanceHandle",
    "InstanceRequest",
    "JobRequest",
    "JobState",
    "Observation",
    "ProcessHandle",
    "Submission",
]

JobState = Literal["queued", "running", "succeeded", "failed", "stopped", "lost"]


@dataclass(frozen=True)
class JobRequest:
    """One attempt of one job: run `argv` (or `python -m module spec_path`) in `workdir`.

    `cards`, `cpus` and `memory_gb` are per node (the flavor's); the job needs `cards * nodes`
    cards of `device` (a cluster executor places one process group per node). `argv` is
    what to run, built by the engine from the runner registry (`zsconf.registry.runner_argv`:
    torchrun when a distributed runner needs more than one process); None means `python -m
    module spec_path`. `priority` (higher first) then `submitted_at` (older first) order the
    queue; `max_cards_for_tenant` (None = no limit) makes a job wait while its tenant uses more.
    """

    run_id: str
    address: str
    spec_path: str
    workdir: str
    module: str = "runners.train"
    kind: str = "job"
    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cards: int = 0
    nodes: int = 1
    device: str = "cpu"  # cpu | npu | cuda
    cpus: int = 0  # 0 = not stated (a cluster executor asks for one)
    memory_gb: float = 0.0
    priority: int = 0
    submitted_at: float = 0.0  # epoch seconds; 0 = now
    tenant: str | None = None
    max_cards_for_tenant: int | None = None
    deepspeed_stage: int | None = None  # recorded; `argv` already runs under torchrun for it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRequest:
        return cls(**d)


@dataclass(frozen=True)
class ProcessHandle:
    """A started process: pid + start time (clock ticks since boot) identify it across pid reuse.

    On a cluster, `host` is the node's address and `placement` what the cluster knows it by (the
    Ray executor: namespace, actor names, node ids), so any later executor can find it again."""

    pid: int
    start_time: float
    pgid: int
    host: str
    workdir: str
    cards: list[int] = field(default_factory=list)
    started_at: float = 0.0  # epoch seconds
    placement: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessHandle:
        return cls(**d)


@dataclass(frozen=True)
class Submission:
    """What `submit` did: started now (`handle` set) or queued (`queue_position` set, 1-based)."""

    run_id: str
    state: Literal["running", "queued"]
    handle: ProcessHandle | None = None
    queue_position: int | None = None
    waiting_behind: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Observation:
    """What a run is doing now. `result` is the parsed result.json once the runner wrote it."""

    run_id: str
    state: JobState
    exit_code: int | None = None
    pid: int | None = None
    start_time: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    result: dict[str, Any] | None = None
    queue_position: int | None = None
    waiting_behind: list[str] = field(default_factory=list)
    message: str = ""
    host: str | None = None  # where it runs (a cluster node's address)
    placement: dict[str, Any] | None = None  # ProcessHandle.placement

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "stopped", "lost")


@dataclass(frozen=True)
class Capacity:
    device: str  # cpu | npu | cuda
    cards_total: int
    cards_free: int
    nodes: int = 1
    detail: str = ""  # one line for `plan` (a cluster's nodes and free resources)


@dataclass(frozen=True)
class InstanceRequest:
    """One server instance of a deployment, listening on `port` (0 = pick a free one).

    The port is substituted for the literal `{port}` in `argv` and exported as `ZSCONF_PORT`; the
    address to bind is exported as `ZSCONF_HOST` (127.0.0.1, or the node's on a cluster).
    `control_plane` instances (the gateway) run beside the daemon, never on a cluster node.
    """

    deployment: str  # address, e.g. deployment/acme/chat
    index: int
    workdir: str
    spec_path: str = ""
    module: str = "runners.serve"
    argv: list[str] | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    cards: int = 0
    device: str = "cpu"
    cpus: int = 0
    memory_gb: float = 0.0
    health_path: str = "/health"
    control_plane: bool = False

    @property
    def instance_id(self) -> str:
        return f"{self.deployment}#{self.index}"


@dataclass(frozen=True)
class InstanceHandle:
    deployment: str
    index: int
    port: int
    url: str  # http://HOST:PORT
    process: ProcessHandle
    health_path: str = "/health"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def start_time(self) -> float:
        return self.process.start_time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstanceHandle:
        d = dict(d)
        d["process"] = ProcessHandle.from_dict(d["process"])
        return cls(**d)


@runtime_checkable
class Executor(Protocol):
    """Turns jobs and deployment instances into processes and reports on them."""

    def submit(self, req: JobRequest) -> Submission:
        """Start `req` now if its cards (and its tenant's quota) allow, else queue it. Idempotent
        per run_id: submitting a run that is already queued or running returns its status."""
        ...

    def observe(self, run_id: str) -> Observation:
        """Current state of a run (queued, running, or finished with exit code and result)."""
        ...

    def observe_many(self, run_ids: list[str]) -> dict[str, Observation]:
        """`observe` for many runs at once (one pass; the engine's refresh)."""
        ...

    def cancel(self, run_id: str, grace_s: float = 10.0, reason: str = "cancelled") -> Observation:
        """Dequeue, or SIGTERM the whole process group and SIGKILL after `grace_s`; the run ends
        `stopped` with `reason` as its message."""
        ...

    def adopt(self, run_id: str, handle: ProcessHandle) -> bool:
        """Re-attach to a run started by an earlier executor; True only when the same pid is
        alive with the same start time (else the run is `lost` unless it left an exit code)."""
        ...

    def capacity(self) -> Capacity: ...

    def start_instance(self, req: InstanceRequest) -> InstanceHandle: ...

    def stop_instance(self, handle: InstanceHandle, grace_s: float = 10.0) -> None: ...

    def instance_alive(self, handle: InstanceHandle) -> bool:
        """The instance's process (pid + start time) still runs; also the adoption check."""
        ...

    def instance_healthy(self, handle: InstanceHandle, timeout_s: float = 2.0) -> bool:
        """Alive and `GET health_path` answers 200."""
        ...

    def wait_healthy(self, handle: InstanceHandle, timeout_s: float = 120.0) -> bool: ...

    def list_instances(self) -> list[InstanceHandle]:
        """Live instances this executor started (records under its root)."""
        ...

    def list_adoptable(self) -> list[ProcessHandle]:
        """Live processes this executor started (found by their run records), for a daemon that
        lost its state or wants to reconcile."""
        ...
