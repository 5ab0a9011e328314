"""The local executor: runner processes on this host, in their own sessions, with a card queue.

Called by `zsconf.engine` (submit, observe, cancel, adopt) and the daemon (supervision and
deployment instances), through `zsconf.executors.get_executor("local", root=...)`.

How it works:
- Every process is started as `python -m zsconf.executors.wrap WORKDIR -- ARGV` with
  `start_new_session=True`: the wrapper is the session and process-group leader, outlives the CLI
  or daemon that started it, and writes `WORKDIR/exit_code` when the runner ends, so any later
  executor learns the exit status of a process that is not its child. stdout and stderr go to
  `WORKDIR/runner.log`; `ZSCONF_RUN_ID` is set in the environment.
- A process is pid + start time (/proc/PID/stat field 22): adoption after a restart succeeds only
  when both match, so a reused pid is never taken for our runner.
- The executor itself persists what it knows under `root` (one JSON record per run in
  `root/runs/`, guarded by a file lock): the queue lives there, so a CLI and a daemon sharing a
  root see the same queue. The engine keeps its own copy of the handles in its runs table and
  passes them back to `adopt` after a restart.
- Cards: the host's cards (`zsconf.executors.cards`) are handed out by index through
  `ASCEND_RT_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES`. A job that does not fit the free cards, or
  its tenant's `max_cards`, waits; the queue is ordered by priority (higher first) then age. A job
  blocked by the host's cards also blocks lower queued jobs that need cards (no starvation of big
  jobs); one blocked by its tenant's quota blocks nobody else. On a host without accelerators
  (device cpu) cards are not counted: every job runs at once on the CPU.
- The executor runs the argv the engine built (`zsconf.registry`: torchrun for a distributed
  runner that needs more than one process) and imports no runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from zsconf.errors import ExecutorError
from zsconf.executors.base import (
    Capacity,
    InstanceHandle,
    InstanceRequest,
    JobRequest,
    Observation,
    ProcessHandle,
    Submission,
)
from zsconf.executors.cards import VISIBLE_ENV, detect_host_cards
from zsconf.executors.procs import find_leader, is_alive, kill_group, pgid_of, process_start_time

__all__ = ["RUN_ID_ENV", "LocalExecutor", "free_port", "read_exit_code", "spawn_wrapped"]

RUN_ID_ENV = "ZSCONF_RUN_ID"


def free_port() -> int:
    """A port free on 127.0.0.1 now (bind port 0). Another process could take it before the
    server binds: `start_instance` callers treat an instance that dies at once as a retry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_exit_code(workdir: str | Path) -> tuple[int, float] | None:
    """(exit_code, ended_at) written by the wrapper, None when absent."""
    try:
        d = json.loads((Path(workdir) / "exit_code").read_text())
        return int(d["exit_code"]), float(d["ended_at"])
    except (OSError, ValueError, KeyError):
        return None


def _read_result(workdir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(workdir) / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def spawn_wrapped(
    argv: list[str], workdir: Path, env: dict[str, str], run_id: str, status_dir: Path | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    """Start `python -m zsconf.executors.wrap STATUS_DIR -- ARGV` in `workdir`, in its own session,
    its output appended to STATUS_DIR/runner.log (STATUS_DIR defaults to `workdir`; a multi-node
    run's other ranks keep theirs apart). Returns the wrapper and its start time."""
    status = status_dir or workdir
    status.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (status / "exit_code").unlink()  # from an earlier attempt in the same workdir
    full_env = dict(os.environ)
    # A runner's output goes to runner.log: progress bars (tqdm, the hub's) are noise there.
    full_env.setdefault("TQDM_DISABLE", "1")
    full_env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    full_env.update(env)
    full_env[RUN_ID_ENV] = run_id
    wrapped = [sys.executable, "-m", "zsconf.executors.wrap", str(status), "--", *argv]
    # SIGTERM is blocked while forking, so the child starts with it blocked: a cancel that
    # arrives before the wrapper has set SIGTERM to ignored stays pending instead of killing
    # the wrapper (which would then leave no exit code). The wrapper unblocks it.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        with open(status / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                wrapped,
                cwd=str(workdir),
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as e:
        raise ExecutorError(f"cannot start {argv[0]} for {run_id}: {e}") from e
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    st = None
    for _ in range(200):
        st = process_start_time(proc.pid)
        if st is not None:
            break
        time.sleep(0.005)
    return proc, st or 0.0


class LocalExecutor:
    """Runs jobs and deployment instances as processes on this host (see the module docstring)."""

    name = "local"

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            root = os.environ.get("ZSCONF_EXECUTOR_ROOT") or Path.home() / ".zsconf" / "executor"
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        (self.root / "instances").mkdir(parents=True, exist_ok=True)
        (self.root / "active").mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()

    # ---- bookkeeping -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _rec_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{_safe(run_id)}.json"

    def _load(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._rec_path(run_id).read_text())
        except (OSError, ValueError):
            return None

    def _save(self, rec: dict[str, Any]) -> None:
        run_id = rec["request"]["run_id"]
        _atomic_json(self._rec_path(run_id), rec)
        # `active/` names the queued and running runs: each pass reads only those, so the cost
        # of a pass does not grow with the history of finished runs.
        marker = self.root / "active" / _safe(run_id)
        if rec.get("state") in ("queued", "running"):
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def _records(self) -> list[dict[str, Any]]:
        """Records of queued and running runs."""
        out = []
        for m in (self.root / "active").iterdir():
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads((self.root / "runs" / f"{m.name}.json").read_text())
                if rec.get("state") in ("queued", "running"):
                    out.append(rec)
        return out

    def _instance_records(self) -> list[dict[str, Any]]:
        out = []
        for p in (self.root / "instances").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
        return out

    # ---- processes ---------------------------------------------------------------------------

    def _spawn(
        self, argv: list[str], workdir: Path, env: dict[str, str], run_id: str, cards: list[int]
    ) -> ProcessHandle:
        env = dict(env)
        device, _ = detect_host_cards()
        if device in VISIBLE_ENV:
            env[VISIBLE_ENV[device]] = ",".join(str(c) for c in cards)
        else:
            # CPU processes (jobs, servers, the gateway) share the host: torch's default of one
            # thread per core oversubscribes it. Measured on the quickstart (2 cores, training,
            # evaluation and servers at once): 321 s with the default, 100 s with one thread each.
            if "OMP_NUM_THREADS" not in os.environ:
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 4)))
        proc, st = spawn_wrapped(argv, workdir, env, run_id)
        # The wrapper records the exit code, so nobody needs wait()'s status; a thread reaps the
        # child while this process lives so it does not linger as a zombie.
        threading.Thread(target=proc.wait, daemon=True).start()
        return ProcessHandle(
            pid=proc.pid,
            start_time=st,
            pgid=proc.pid,
            host=self.host,
            workdir=str(workdir),
            cards=cards,
            started_at=time.time(),
        )

    @staticmethod
    def _job_argv(req: JobRequest) -> list[str]:
        """The argv the engine built (`zsconf.registry`), else `python -m module spec_path`."""
        return list(req.argv) if req.argv else [sys.executable, "-m", req.module, req.spec_path]

    # ---- state of a record ---------------------------------------------------------------------

    def _refresh(self, rec: dict[str, Any]) -> bool:
        """Bring a running record up to date with the process; True when it changed."""
        if rec["state"] != "running":
            return False
        h = rec["handle"]
        if self._handle_alive(h):
            return False
        workdir = h["workdir"]
        ec = read_exit_code(workdir)
        result = _read_result(workdir)
        rec["ended_at"] = ec[1] if ec else time.time()
        rec["exit_code"] = ec[0] if ec else None
        if rec.get("cancelled"):
            rec["state"] = "stopped"
        elif ec is not None:
            ok = ec[0] == 0 and (result is None or result.get("status") == "succeeded")
            rec["state"] = "succeeded" if ok else "failed"
            if ec[0] == 0 and result is None:
                rec["message"] = "exited 0 without writing result.json"
                rec["state"] = "failed"
        elif result is not None:
            rec["state"] = "succeeded" if result.get("status") == "succeeded" else "failed"
        else:
            rec["state"] = "lost"
            rec["message"] = self._lost_message(h)
        self._release(h)
        return True

    # ---- what differs on a cluster (zsconf.executors.ray_cluster overrides these) ---------------

    def _handle_alive(self, h: dict[str, Any]) -> bool:
        """The run's process (pid + start time) still runs."""
        return is_alive(h["pid"], h["start_time"])

    def _lost_message(self, h: dict[str, Any]) -> str:
        return "process is gone and left no exit code"

    def _release(self, h: dict[str, Any]) -> None:
        """A run ended: give back what held its resources (nothing to do for a local process)."""

    def _kill(self, h: dict[str, Any], grace_s: float) -> None:
        """SIGTERM the run's process group, SIGKILL after `grace_s`."""
        if is_alive(h["pid"], h["start_time"]):
            kill_group(h["pgid"], grace_s)

    def _pool(self, running: list[dict[str, Any]]) -> Any:
        """What is free now, for `_fit`: the host's free card indexes."""
        _, total = detect_host_cards()
        used = {c for r in running for c in r["handle"].get("cards", [])}
        used |= {
            c
            for r in self._instance_records()
            if self._instance_alive(r)
            for c in r["process"].get("cards", [])
        }
        return [c for c in range(total) if c not in used]

    def _fit(self, pool: Any, req: JobRequest) -> Any:
        """Where `req` runs if it fits `pool` now (taking it from the pool), else None."""
        need = self._cards_needed(req, detect_host_cards()[0])
        if need > len(pool):
            return None
        cards = pool[:need]
        del pool[:need]
        return cards

    def _short_of(self, pool: Any, req: JobRequest) -> str:
        """Why `req` does not fit `pool` (the queued job's message)."""
        device, total = detect_host_cards()
        return f"needs {self._cards_needed(req, device)} {device} cards, {len(pool)} free of {total}"

    def _find_started(self, req: JobRequest, placement: Any) -> ProcessHandle | None:
        """The run's process when a pass that died before recording it had started it."""
        found = find_leader(f"{RUN_ID_ENV}={req.run_id}")
        if found is None:
            return None
        return ProcessHandle(found[0], found[1], found[0], self.host, req.workdir, placement, time.time())

    def _start_job(self, req: JobRequest, placement: Any) -> ProcessHandle:
        return self._spawn(self._job_argv(req), Path(req.workdir), req.env, req.run_id, placement)

    def _schedule(self) -> None:
        """Start queued jobs that fit now. Caller holds the lock."""
        recs = self._records()
        for rec in recs:
            if self._refresh(rec):
                self._save(rec)
        device, _ = detect_host_cards()
        running = [r for r in recs if r["state"] == "running"]
        pool = self._pool(running)
        # (run id, tenant, cards) of what runs, and of what this pass starts: who a job waits behind
        # (a cluster's handles name no card indexes: what the request asked is what it holds)
        holders = [
            (r["request"]["run_id"], r["request"]["tenant"],
             len(r["handle"].get("cards") or []) or self._cards_needed(JobRequest.from_dict(r["request"]), device))
            for r in running
        ]  # fmt: skip
        queued = sorted(
            (r for r in recs if r["state"] == "queued"),
            key=lambda r: (-r["request"]["priority"], r["request"]["submitted_at"]),
        )
        blocked_by_host: list[str] = []
        starting: list[tuple[dict[str, Any], JobRequest, Any]] = []
        waiting = 0  # queue positions count only the jobs that still wait
        for rec in queued:
            req = JobRequest.from_dict(rec["request"])
            need = self._cards_needed(req, device)
            quota = req.max_cards_for_tenant
            tenant_used = sum(c for _, t, c in holders if t == req.tenant)
            if quota is not None and need and tenant_used + need > quota:
                rec["waiting_behind"] = [r for r, t, _ in holders if t == req.tenant]
                rec["message"] = f"tenant {req.tenant} may use {quota} cards and this job needs {need}"
            elif (need and blocked_by_host) or (placement := self._fit(pool, req)) is None:
                rec["waiting_behind"] = [r for r, _, c in holders if c] + blocked_by_host
                rec["message"] = self._short_of(pool, req)
                if need:
                    blocked_by_host.append(req.run_id)
            else:
                holders.append((req.run_id, req.tenant, need))
                rec["queue_position"] = None
                found = self._find_started(req, placement) if rec.get("spawning") else None
                if found is not None:
                    # Started by a pass that died before recording it: adopt, never start twice.
                    rec.update(state="running", handle=found.as_dict(), waiting_behind=[], message="")
                else:
                    rec["spawning"] = True
                    starting.append((rec, req, placement))
                self._save(rec)
                continue
            waiting += 1
            rec["queue_position"] = waiting
            self._save(rec)
        started = self._start_jobs([(req, placement) for _, req, placement in starting])
        for (rec, _, _), outcome in zip(starting, started, strict=True):
            if isinstance(outcome, ExecutorError):
                rec.update(state="failed", message=str(outcome), ended_at=time.time())
            else:
                rec.update(
                    state="running", handle=outcome.as_dict(), waiting_behind=[], message="", spawning=False
                )
            self._save(rec)

    def _start_jobs(self, items: list[tuple[JobRequest, Any]]) -> list[ProcessHandle | ExecutorError]:
        """Start each (request, placement) of one pass; a failure is returned, not raised."""
        out: list[ProcessHandle | ExecutorError] = []
        for req, placement in items:
            try:
                out.append(self._start_job(req, placement))
            except ExecutorError as e:
                out.append(e)
        return out

    @staticmethod
    def _cards_needed(req: JobRequest, device: str) -> int:
        if device == "cpu" or req.device == "cpu":
            return 0
        return req.cards * req.nodes

    def _observation(self, rec: dict[str, Any]) -> Observation:
        h = rec.get("handle") or {}
        result = _read_result(h["workdir"]) if h and rec["state"] != "queued" else None
        return Observation(
            run_id=rec["request"]["run_id"],
            state=rec["state"],
            exit_code=rec.get("exit_code"),
            pid=h.get("pid"),
            start_time=h.get("start_time"),
            started_at=h.get("started_at"),
            ended_at=rec.get("ended_at"),
            result=result,
            queue_position=rec.get("queue_position"),
            waiting_behind=list(rec.get("waiting_behind") or []),
            message=rec.get("message", ""),
            host=h.get("host"),
            placement=h.get("placement"),
        )

    # ---- the Executor protocol: jobs ----------------------------------------------------------

    def _never_fits(self, req: JobRequest) -> str | None:
        """Why `req` can never run here (more than the host has), else None."""
        device, total = detect_host_cards()
        need = self._cards_needed(req, device)
        return f"{req.address} needs {need} {device} cards; this host has {total}" if need > total else None

    def submit(self, req: JobRequest) -> Submission:
        refused = self._never_fits(req)
        if refused:
            raise ExecutorError(refused)
        if not req.submitted_at:
            req = replace(req, submitted_at=time.time())
        with self._locked():
            rec = self._load(req.run_id)
            if rec is None or rec["state"] not in ("queued", "running"):
                rec = {"request": req.as_dict(), "state": "queued", "handle": None, "cancelled": False}
                self._save(rec)
            self._schedule()
            rec = self._load(req.run_id) or rec
        if rec["state"] == "running":
            return Submission(req.run_id, "running", handle=ProcessHandle.from_dict(rec["handle"]))
        if rec["state"] == "queued":
            return Submission(
                req.run_id, "queued", queue_position=rec.get("queue_position"),
                waiting_behind=list(rec.get("waiting_behind") or []),
            )  # fmt: skip
        raise ExecutorError(f"{req.address}: {rec.get('message') or 'could not start'}")

    def observe(self, run_id: str) -> Observation:
        with self._locked():
            self._schedule()
            rec = self._load(run_id)
        if rec is None:
            return Observation(run_id=run_id, state="lost", message="this executor has no record of the run")
        return self._observation(rec)

    def observe_many(self, run_ids: list[str]) -> dict[str, Observation]:
        """`observe` for many runs with one scheduling pass (the engine's refresh)."""
        with self._locked():
            self._schedule()
            recs = {r: self._load(r) for r in run_ids}
        return {
            r: self._observation(rec)
            if rec is not None
            else Observation(run_id=r, state="lost", message="this executor has no record of the run")
            for r, rec in recs.items()
        }

    def cancel(self, run_id: str, grace_s: float = 10.0, reason: str = "cancelled") -> Observation:
        with self._locked():
            rec = self._load(run_id)
            if rec is None:
                return Observation(
                    run_id=run_id, state="lost", message="this executor has no record of the run"
                )
            if rec["state"] == "queued":
                rec.update(
                    state="stopped", cancelled=True, ended_at=time.time(), queue_position=None, message=reason
                )
                self._save(rec)
            elif rec["state"] == "running":
                rec.update(cancelled=True, message=reason)
                self._save(rec)
        if rec["state"] == "running":
            self._kill(rec["handle"], grace_s)
        return self.observe(run_id)

    def _as_adopted(self, handle: ProcessHandle) -> tuple[bool, ProcessHandle]:
        """(alive, the handle to keep) for a process handed to `adopt`."""
        alive = is_alive(handle.pid, handle.start_time)
        leader = pgid_of(handle.pid) if alive else None
        if leader is not None and leader != handle.pid:
            # Given the runner rather than its wrapper (e.g. found by its environment): adopt the
            # wrapper, the group leader that records the exit code and that cancel signals.
            lst = process_start_time(leader)
            if lst is not None:
                handle = replace(handle, pid=leader, pgid=leader, start_time=lst)
            else:
                handle = replace(handle, pgid=leader)
        return alive, handle

    def adopt(self, run_id: str, handle: ProcessHandle) -> bool:
        alive, handle = self._as_adopted(handle)
        with self._locked():
            rec = self._load(run_id)
            if rec is None:
                req = JobRequest(run_id=run_id, address="", spec_path="", workdir=handle.workdir)
                rec = {"request": req.as_dict(), "cancelled": False}
            if rec.get("state") in ("succeeded", "failed", "stopped") and not alive:
                return False
            if alive or rec.get("state") != "lost":
                rec.update(state="running", handle=handle.as_dict())
                if not alive:
                    self._refresh(rec)  # finished while nobody watched: exit_code tells how
            self._save(rec)
        return alive

    def capacity(self) -> Capacity:
        device, total = detect_host_cards()
        with self._locked():
            self._schedule()
            free = self._pool([r for r in self._records() if r["state"] == "running"])
        return Capacity(device=device, cards_total=total, cards_free=len(free))

    def list_adoptable(self) -> list[ProcessHandle]:
        out = []
        for rec in self._records():
            h = rec.get("handle")
            if rec.get("state") == "running" and h and self._handle_alive(h):
                out.append(ProcessHandle.from_dict(h))
        return out

    # ---- deployment instances -----------------------------------------------------------------

    def _inst_path(self, deployment: str, index: int) -> Path:
        return self.root / "instances" / f"{_safe(deployment)}#{index}.json"

    def _instance_alive(self, rec: dict[str, Any]) -> bool:
        return self._handle_alive(rec["process"])

    def start_instance(self, req: InstanceRequest) -> InstanceHandle:
        """Start one server process (no waiting for health: call `instance_healthy`/`wait_healthy`)."""
        port = req.port or free_port()
        if req.argv:
            argv = [a.replace("{port}", str(port)) for a in req.argv]
        else:
            argv = [sys.executable, "-m", req.module, req.spec_path]
        env = dict(req.env)
        env["ZSCONF_PORT"] = str(port)
        env["ZSCONF_HOST"] = "127.0.0.1"
        device, total = detect_host_cards()
        need = 0 if device == "cpu" or req.device == "cpu" else req.cards
        with self._locked():
            cards: list[int] = []
            if need:
                self._schedule()
                free = self._pool([r for r in self._records() if r["state"] == "running"])
                if len(free) < need:
                    raise ExecutorError(
                        f"{req.instance_id} needs {need} {device} cards, {len(free)} free of {total}"
                    )
                cards = free[:need]
            proc = self._spawn(argv, Path(req.workdir), env, req.instance_id, cards)
            handle = InstanceHandle(
                deployment=req.deployment, index=req.index, port=port, url=f"http://127.0.0.1:{port}",
                process=proc, health_path=req.health_path,
            )  # fmt: skip
            _atomic_json(self._inst_path(req.deployment, req.index), handle.as_dict())
        return handle

    def stop_instance(self, handle: InstanceHandle, grace_s: float = 10.0) -> None:
        """SIGTERM the server's group (it drains in-flight requests), SIGKILL after `grace_s`."""
        p = handle.process
        self._kill(p.as_dict(), grace_s)
        self._release(p.as_dict())
        with self._locked():
            path = self._inst_path(handle.deployment, handle.index)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text())["process"]["pid"] == p.pid:
                    path.unlink()

    def instance_alive(self, handle: InstanceHandle) -> bool:
        return self._handle_alive(handle.process.as_dict())

    def instance_healthy(self, handle: InstanceHandle, timeout_s: float = 2.0) -> bool:
        """Process alive and `GET health_path` answers 200 (stdlib client: cheap to import)."""
        if not self.instance_alive(handle):
            return False
        import http.client
        from urllib.parse import urlsplit

        host = urlsplit(handle.url).hostname or "127.0.0.1"
        conn = http.client.HTTPConnection(host, handle.port, timeout=timeout_s)
        try:
            conn.request("GET", handle.health_path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def wait_healthy(self, handle: InstanceHandle, timeout_s: float = 120.0) -> bool:
        """Poll health until it answers 200 (True) or the process dies / time runs out (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.instance_healthy(handle, timeout_s=2.0):
                return True
            if not self.instance_alive(handle):
                return False
            time.sleep(0.1)
        return False

    def list_instances(self) -> list[InstanceHandle]:
        """Instances this executor started that are still alive (for adoption by a new daemon)."""
        return [InstanceHandle.from_dict(r) for r in self._instance_records() if self._instance_alive(r)]

    def adopt_instance(self, handle: InstanceHandle) -> bool:
        """True when the instance's process (pid + start time) is still the one started."""
        return self.instance_alive(handle)
