"""The Ray executor: jobs and model servers on the nodes of a Ray cluster (`platform.executor.kind:
ray`), behind the same interface as the local executor.

Called by the engine and the daemon through `zsconf.executors.default_executor`, which makes one
when the stack's platform asks for it. Ray is imported on first use, never by the CLI's other paths.

How it works, and what it keeps from the local executor:
- The queue is zsconf's (`LocalExecutor._schedule`: priority, age, tenants' card quotas, the same
  records under the same root). Only where a job fits differs: `_pool` reads every live node's
  free resources from Ray and `_fit` picks nodes with room for the flavor's bundle (cards as `GPU`
  or `NPU`, CPUs, memory), one node per process group of a multi-node job (no two on one node).
- Each process runs inside a detached, named `NodeProcess` actor (`ray_node.py`) pinned to the
  node chosen, in namespace `namespace`; the actor holds the resources and its process dies with
  it. Names are derived from run ids (`zsconf:RUN_ID:RANK`), so a daemon restarted anywhere finds
  its runs again from the handles in the state store (`placement`), and a start interrupted by a
  crash is found before anything starts twice.
- A multi-node job runs `torchrun --nnodes N --node_rank I` on each node, the rendezvous at rank
  0's node and a port free there; rank 0 writes `exit_code`, `runner.log` and `result.json` in the
  run folder on shared storage, the other ranks their own `exit_code` and log under `ranks/I/`.
- A run whose actor is gone (its node left the cluster) is `lost`, which the engine restarts from
  its latest checkpoint; an instance whose actor is gone is not alive, so supervision starts it
  again on a node that has room, preferring nodes without another instance of the deployment.
- The gateway (`control_plane` instances) runs on this host as on the local executor: handles
  without `placement` are local processes, checked by pid and start time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from zsconf.errors import ExecutorError
from zsconf.executors.base import Capacity, InstanceHandle, InstanceRequest, JobRequest, ProcessHandle
from zsconf.executors.local import LocalExecutor, _atomic_json, _safe

__all__ = ["RayExecutor"]

_START_TIMEOUT_S = float(os.environ.get("ZSCONF_RAY_START_TIMEOUT", "120"))
_CALL_TIMEOUT_S = 30.0
_CARD_RESOURCE = {"cuda": "GPU", "gpu": "GPU", "npu": "NPU"}
_connect_lock = threading.Lock()
# What a node's process inherits from the control host's environment (the rest of its environment
# is its node's): zsconf's own settings, the Hugging Face libraries' (caches, offline mode), and
# PYTHONPATH.
_FORWARDED = ("ZSCONF_", "HF_", "TRANSFORMERS_", "PYTHONPATH")


def bundle(req: JobRequest | InstanceRequest) -> dict[str, float]:
    """The Ray resources one node's share of a job, or one instance, asks for."""
    out: dict[str, float] = {"CPU": float(max(req.cpus, 1))}
    if req.memory_gb:
        out["memory"] = float(int(req.memory_gb * 2**30))
    if req.cards and req.device in _CARD_RESOURCE:
        out[_CARD_RESOURCE[req.device]] = float(req.cards)
    return out


def _has(node: dict[str, Any], need: dict[str, float], which: str = "free") -> bool:
    """The node's `which` resources ("free" or "total") cover `need`."""
    return all(node[which].get(k, 0.0) >= v for k, v in need.items())


def _describe(b: dict[str, float]) -> str:
    parts = [f"{b[k]:g} {k}" for k in ("GPU", "NPU", "CPU") if k in b]
    if "memory" in b:
        parts.append(f"{b['memory'] / 2**30:g} GiB")
    return ", ".join(parts)


class RayExecutor(LocalExecutor):
    """Runs jobs and deployment instances on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(
        self, root: str | Path | None, address: str | None = None, namespace: str = "zsconf"
    ) -> None:
        super().__init__(root)
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self.namespace = namespace
        self._actor_cls: Any = None
        # node id -> until when (monotonic) nothing is placed there: a node whose actor vanished
        # looks alive to Ray until its health checks fail (about 15 s), and a replacement pinned
        # to it would be cancelled.
        self._suspect: dict[str, float] = {}

    # ---- the cluster ---------------------------------------------------------------------------

    def _ray(self) -> Any:
        """The `ray` module, connected to the cluster (once per process)."""
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                "platform.executor.kind is ray, but ray is not installed here: pip install 'zsconf[ray]'"
            ) from None

        with _connect_lock:
            if not ray.is_initialized():
                _check_reachable(self.address)
                try:
                    ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                             logging_level=logging.ERROR, configure_logging=False)  # fmt: skip
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise ExecutorError(
                        f"cannot reach the Ray cluster at {self.address} (platform.executor.address): {e}"
                    ) from None
        return ray

    def _actor(self, name: str) -> Any | None:
        """The live actor called `name` in this stack's namespace, None when there is none."""
        ray = self._ray()
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return None

    def _nodes(self) -> list[dict[str, Any]]:
        """Live nodes: node_id, ip, total and free resources."""
        ray = self._ray()
        from ray._private import state  # per-node free resources: no public API gives them

        free = state.available_resources_per_node()
        now = time.monotonic()
        return [
            {"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "total": dict(n["Resources"]),
             "free": dict(free.get(n["NodeID"], {}))}
            for n in ray.nodes() if n.get("Alive") and self._suspect.get(n["NodeID"], 0.0) < now
        ]  # fmt: skip

    def _launch(self, name: str, node: dict[str, Any], need: dict[str, float]) -> Any:
        """A detached NodeProcess actor called `name`, pinned to `node`, holding `need`."""
        ray = self._ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actor_cls is None:
            from zsconf.executors.ray_node import NodeProcess

            self._actor_cls = ray.remote(NodeProcess)
        extra = {k: v for k, v in need.items() if k not in ("CPU", "GPU", "memory")}
        return self._actor_cls.options(
            name=name, namespace=self.namespace, lifetime="detached", max_restarts=0, max_concurrency=4,
            num_cpus=need.get("CPU", 1), num_gpus=need.get("GPU", 0), memory=need.get("memory"),
            resources=extra or None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
        ).remote()  # fmt: skip

    def _get(self, refs: list[Any], timeout: float, what: str) -> list[Any]:
        ray = self._ray()
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise ExecutorError(f"{what}: the cluster did not answer within {timeout:g} s") from None
        except ray.exceptions.RayError as e:
            raise ExecutorError(f"{what}: {_ray_message(e)}") from None

    def _kill_actors(self, names: list[str]) -> None:
        ray = self._ray()
        for name in names:
            actor = self._actor(name)
            if actor is not None:
                ray.kill(actor, no_restart=True)

    def _launch_group(
        self, names: list[str], nodes: list[dict[str, Any]], need: dict[str, float]
    ) -> list[Any]:
        """One actor per node of `nodes`, called `names` (Ray starts them while we go on)."""
        self._kill_actors(names)  # left by a start a crash interrupted: nothing started twice
        return [self._launch(n, node, need) for n, node in zip(names, nodes, strict=True)]

    def _start_group(
        self, run_id: str, what: str, actors: list[Any], names: list[str], argv_for: Any, workdir: str,
        env: dict[str, str],
    ) -> tuple[ProcessHandle, list[dict[str, Any]], Any]:  # fmt: skip
        """Start each launched actor's process, `argv_for(rank, wheres, actor0)` (ranks in
        order); (the handle, where each landed, rank 0's actor). On failure the actors go."""
        env.update({k: v for k, v in os.environ.items() if k.startswith(_FORWARDED) and k not in env})
        try:
            wheres = self._get([a.where.remote() for a in actors], _START_TIMEOUT_S, f"placing {what}")
            argvs = [argv_for(rank, wheres, actors[0]) for rank in range(len(actors))]
            infos = self._get(
                [a.start.remote(argv, workdir, env, run_id, None if rank == 0 else f"{workdir}/ranks/{rank}")
                 for rank, (a, argv) in enumerate(zip(actors, argvs, strict=True))],
                _CALL_TIMEOUT_S, f"starting {what}",
            )  # fmt: skip
        except ExecutorError:
            self._kill_actors(names)
            raise
        return self._handle(names, wheres, infos[0], workdir), wheres, actors[0]

    # ---- the local executor's hooks ------------------------------------------------------------

    def _handle_alive(self, h: dict[str, Any]) -> bool:
        placement = h.get("placement")
        if not placement:
            return super()._handle_alive(h)  # a control-plane process, or one started locally
        ray = self._ray()
        actors = [self._actor(n) for n in placement["actors"]]
        gone = [node for a, node in zip(actors, placement["nodes"], strict=True) if a is None]
        try:
            codes = ray.get([a.poll.remote() for a in actors if a is not None], timeout=_CALL_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            return True  # busy (stopping): not known to be gone
        except ray.exceptions.RayError:
            gone = placement["nodes"]
        if gone:
            self._suspect.update(dict.fromkeys(gone, time.monotonic() + 60.0))
            return False
        return codes[0] is None

    def _lost_message(self, h: dict[str, Any]) -> str:
        if not h.get("placement"):
            return super()._lost_message(h)
        return f"lost with its node ({', '.join(h['placement']['ips'])}): the Ray actor holding it is gone"

    def _release(self, h: dict[str, Any]) -> None:
        if h.get("placement"):
            self._kill_actors(h["placement"]["actors"])

    def _kill(self, h: dict[str, Any], grace_s: float) -> None:
        placement = h.get("placement")
        if not placement:
            super()._kill(h, grace_s)
            return
        actors = [a for a in (self._actor(n) for n in placement["actors"]) if a is not None]
        ray = self._ray()
        # An actor already gone took its process with it.
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get([a.terminate.remote(grace_s) for a in actors], timeout=grace_s + _CALL_TIMEOUT_S)

    @staticmethod
    def _cards_needed(req: JobRequest, device: str) -> int:
        return 0 if req.device == "cpu" else req.cards * req.nodes

    def _pool(self, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._nodes()

    def _pick(
        self, pool: list[dict[str, Any]], need: dict[str, float], count: int, avoid: set[str] = frozenset()
    ) -> list[dict[str, Any]] | None:  # fmt: skip
        """`count` distinct nodes of `pool` with `need` free (nodes in `avoid` last; then the ones
        with the most free cards and CPUs), taken from the pool; None when too few have room."""
        fits = [n for n in pool if _has(n, need)]
        if len(fits) < count:
            return None
        fits.sort(key=lambda n: (n["node_id"] in avoid, -n["free"].get("GPU", 0) - n["free"].get("NPU", 0),
                                 -n["free"].get("CPU", 0), n["node_id"]))  # fmt: skip
        chosen = fits[:count]
        for n in chosen:
            for k, v in need.items():
                n["free"][k] -= v
        return chosen

    def _fit(self, pool: Any, req: JobRequest) -> Any:
        chosen = self._pick(pool, bundle(req), req.nodes)
        return None if chosen is None else [{"node_id": n["node_id"], "ip": n["ip"]} for n in chosen]

    def _short_of(self, pool: Any, req: JobRequest | InstanceRequest) -> str:
        need, count = bundle(req), getattr(req, "nodes", 1)
        room = sum(1 for n in pool if _has(n, need))
        return (
            f"needs {count} node(s) with {_describe(need)} free; {room} of the cluster's "
            f"{len(pool)} nodes have that now"
        )

    def _never_fits(self, req: JobRequest) -> str | None:
        need = bundle(req)
        nodes = self._nodes()
        big = sum(1 for n in nodes if _has(n, need, "total"))
        if big >= req.nodes:
            return None
        return (
            f"{req.address} needs {req.nodes} node(s) with {_describe(need)} each; the Ray cluster at "
            f"{self.address} has {big} such node(s) of {len(nodes)}"
        )

    @staticmethod
    def _job_names(run_id: str, nodes: int) -> list[str]:
        return [f"zsconf:{run_id}:{rank}" for rank in range(nodes)]

    def _find_started(self, req: JobRequest, placement: Any) -> ProcessHandle | None:
        # A pass that died mid-start left actors, perhaps not all of them or without a process:
        # `_launch_group` replaces those. Only a complete group whose rank 0 runs is adopted.
        names = self._job_names(req.run_id, req.nodes)
        actors = [self._actor(n) for n in names]
        if any(a is None for a in actors):
            return None
        try:
            wheres = self._get([a.where.remote() for a in actors], _CALL_TIMEOUT_S, req.address)
            first = self._get([actors[0].info.remote()], _CALL_TIMEOUT_S, req.address)[0]
        except ExecutorError:
            return None
        return None if first is None else self._handle(names, wheres, first, req.workdir)

    def _handle(
        self, names: list[str], wheres: list[dict[str, Any]], first: dict[str, Any], workdir: str
    ) -> ProcessHandle:
        return ProcessHandle(
            pid=first["pid"], start_time=first["start_time"], pgid=first["pid"], host=wheres[0]["ip"],
            workdir=workdir, cards=[], started_at=first["started_at"],
            placement={"namespace": self.namespace, "actors": names,
                       "nodes": [w["node_id"] for w in wheres], "ips": [w["ip"] for w in wheres]},
        )  # fmt: skip

    def _start_jobs(self, items: list[tuple[JobRequest, Any]]) -> list[ProcessHandle | ExecutorError]:
        """Every job's actors first (Ray starts their workers in parallel), then their processes."""
        launched: list[list[Any] | ExecutorError] = []
        for req, placement in items:
            try:
                launched.append(
                    self._launch_group(self._job_names(req.run_id, req.nodes), placement, bundle(req))
                )
            except ExecutorError as e:
                launched.append(e)
        out: list[ProcessHandle | ExecutorError] = []
        for (req, _), actors in zip(items, launched, strict=True):
            if isinstance(actors, ExecutorError):
                out.append(actors)
                continue
            try:
                out.append(self._start_in(req, actors))
            except ExecutorError as e:
                out.append(e)
        return out

    def _start_in(self, req: JobRequest, actors: list[Any]) -> ProcessHandle:
        """Start the processes of `req` in its launched actors (one per node)."""
        from zsconf.registry import torchrun_node_argv

        master: dict[str, int] = {}

        def argv_for(rank: int, wheres: list[dict[str, Any]], first: Any) -> list[str]:
            argv = self._job_argv(req)
            if req.nodes == 1 or "torch.distributed.run" not in argv:
                return argv  # (not distributed: the same program on each node)
            if rank == 0:  # the rendezvous: a port free on rank 0's node
                master["port"] = self._get([first.free_port.remote()], _CALL_TIMEOUT_S, req.address)[0]
            python, target = _torchrun_target(argv)
            return torchrun_node_argv(python, max(req.cards, 1), req.nodes, rank, wheres[0]["ip"],
                                      master["port"], target)  # fmt: skip

        names = self._job_names(req.run_id, req.nodes)
        handle, _, _ = self._start_group(
            req.run_id, req.address, actors, names, argv_for, req.workdir, dict(req.env)
        )
        return handle

    def _as_adopted(self, handle: ProcessHandle) -> tuple[bool, ProcessHandle]:
        if not handle.placement:
            return super()._as_adopted(handle)
        return self._handle_alive(handle.as_dict()), handle

    # ---- capacity --------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """The cluster's nodes that take work (a head started with no CPUs does not) and their
        cards (of the accelerator kind it has) and CPUs, in all and free now."""
        nodes = [n for n in self._nodes() if any(n["total"].get(k) for k in ("CPU", "GPU", "NPU"))]
        total: dict[str, float] = {}
        free: dict[str, float] = {}
        for n in nodes:
            for k in ("GPU", "NPU", "CPU"):
                total[k] = total.get(k, 0.0) + n["total"].get(k, 0.0)
                free[k] = free.get(k, 0.0) + n["free"].get(k, 0.0)
        kind = next((k for k in ("NPU", "GPU") if total.get(k)), None)
        device = {"NPU": "npu", "GPU": "cuda"}.get(kind or "", "cpu")
        parts = [f"{free[k]:g} of {total[k]:g} {k} free" for k in ("GPU", "NPU", "CPU") if total.get(k)]
        detail = f"Ray cluster at {self.address}: {len(nodes)} node(s); " + ", ".join(
            parts or ["no resources"]
        )
        return Capacity(
            device=device, cards_total=int(total.get(kind, 0)) if kind else 0,
            cards_free=int(free.get(kind, 0)) if kind else 0, nodes=len(nodes), detail=detail,
        )  # fmt: skip

    def unseen_storage(self, path: str | Path) -> list[str]:
        """'NODE_IP: PATH' for each live node that cannot see `path` (platform.storage)."""
        ray = self._ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from zsconf.executors.ray_node import unseen

        check = ray.remote(num_cpus=0)(unseen)
        nodes = self._nodes()
        refs = [
            check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["node_id"], soft=False)
            ).remote([str(path)])
            for n in nodes
        ]
        missing = self._get(refs, _CALL_TIMEOUT_S, "checking platform.storage on every node")
        return [f"{n['ip']} ({n['node_id'][:8]}): {m[0]}" for n, m in zip(nodes, missing, strict=True) if m]

    # ---- deployment instances --------------------------------------------------------------------

    def start_instance(self, req: InstanceRequest) -> InstanceHandle:
        """Start one server on a node with room, preferring nodes without another instance of the
        same deployment; control-plane instances (the gateway) start on this host."""
        if req.control_plane:
            return super().start_instance(req)
        need = bundle(req)
        siblings = {
            n
            for h in self.list_instances()
            if h.deployment == req.deployment and h.index != req.index and h.process.placement
            for n in h.process.placement["nodes"]
        }
        pool = self._nodes()
        chosen = self._pick(pool, need, 1, avoid=siblings)
        if chosen is None:
            raise ExecutorError(f"{req.instance_id}: {self._short_of(pool, req)}")
        name = f"zsconf:{_safe(req.instance_id)}:{time.time_ns()}"
        env = dict(req.env)  # gets the port and address the node chose, before the process starts

        def argv_for(rank: int, wheres: list[dict[str, Any]], first: Any) -> list[str]:
            port = req.port or self._get([first.free_port.remote()], _CALL_TIMEOUT_S, req.instance_id)[0]
            env.update(ZSCONF_PORT=str(port), ZSCONF_HOST=wheres[0]["ip"])
            if req.argv:
                return [a.replace("{port}", str(port)) for a in req.argv]
            return [sys.executable, "-m", req.module, req.spec_path]

        actors = self._launch_group([name], chosen, need)
        proc, wheres, _ = self._start_group(req.instance_id, req.instance_id, actors, [name], argv_for,
                                            req.workdir, env)  # fmt: skip
        port = int(env["ZSCONF_PORT"])
        handle = InstanceHandle(
            deployment=req.deployment, index=req.index, port=port, url=f"http://{wheres[0]['ip']}:{port}",
            process=proc, health_path=req.health_path,
        )  # fmt: skip
        with self._locked():
            _atomic_json(self._inst_path(req.deployment, req.index), handle.as_dict())
        return handle


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, on a HOST:PORT nobody listens at (Ray retries for long)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # auto, local, ray://...: Ray's own checks answer fast enough
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address} (platform.executor.address): {e}"
        ) from None


def _torchrun_target(argv: list[str]) -> tuple[str, list[str]]:
    """(interpreter, what it runs) of a torchrun argv, torchrun's own options left out: the engine
    builds one host's argv (`zsconf.registry.runner_argv`), a multi-node run needs each node's."""
    rest = argv[argv.index("torch.distributed.run") + 1 :]
    while rest and rest[0].startswith("--"):
        rest = rest[1:]
    return argv[0], rest


def _ray_message(e: BaseException) -> str:
    """The useful last line of a Ray error (a node actor's RuntimeError says what a node lacks)."""
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
