"""The Ray executor on a real 3-node Ray cluster on this machine (conftest.RayCluster), with real
processes (tests/fake_runners/exec_*.py): placement by resources, one process group across two
nodes, cancel, a node lost under a job and under a server instance, adoption by another process,
and the storage check. No part of Ray is mocked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsconf.errors import ExecutorError
from zsconf.executors import InstanceRequest, JobRequest, ProcessHandle, ensure_instances
from zsconf.executors.ray_cluster import RayExecutor
from zsconf.registry import torchrun_argv

FAKE = Path(__file__).parent / "fake_runners"
JOB = str(FAKE / "exec_job.py")
DIST = str(FAKE / "exec_dist.py")
SERVER = str(FAKE / "exec_server.py")


@pytest.fixture
def ex(ray_cluster: object, tmp_path: Path) -> RayExecutor:
    e = RayExecutor(tmp_path / "exec", address=ray_cluster.address, namespace=f"t-{tmp_path.name}")
    yield e
    for rec in e._records():  # no orphans: stop whatever a failing test left running
        if rec["state"] in ("running", "queued"):
            e.cancel(rec["request"]["run_id"], grace_s=0.5)
    for h in e.list_instances():
        e.stop_instance(h, grace_s=0.5)


def req(tmp_path: Path, run_id: str, mode: str, seconds: float = 0, **kw: object) -> JobRequest:
    wd = tmp_path / "runs" / run_id
    wd.mkdir(parents=True, exist_ok=True)
    return JobRequest(
        run_id=run_id, address=f"finetune/acme/{run_id}", spec_path="", workdir=str(wd),
        argv=[sys.executable, JOB, str(wd), mode, str(seconds)], cpus=2, memory_gb=4, **kw,
    )  # fmt: skip


def wait_done(ex: RayExecutor, run_id: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = ex.observe(run_id)
        if obs.finished:
            return obs
        time.sleep(0.1)
    raise AssertionError(f"{run_id} did not finish: {ex.observe(run_id)}")


def started(ex: RayExecutor, job: JobRequest, timeout: float = 60) -> ProcessHandle:
    """Submit and wait until it runs: Ray's view of free resources lags a previous test's release
    by a moment, in which a job that needs them queues."""
    ex.submit(job)
    deadline = time.monotonic() + timeout
    while (obs := ex.observe(job.run_id)).state == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert obs.state == "running", obs
    return ProcessHandle.from_dict(ex._load(job.run_id)["handle"])


def actor_alive(ex: RayExecutor, name: str) -> bool:
    return ex._actor(name) is not None


def test_job_runs_on_a_node_and_gives_its_resources_back(ex: RayExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-ok", "sleep", 0.5))
    assert sub.state == "running" and sub.handle is not None
    placement = sub.handle.placement
    assert placement["actors"] == ["zsconf:r-ok:0"] and len(placement["nodes"]) == 1
    assert ex.observe("r-ok").state == "running"
    obs = wait_done(ex, "r-ok")
    assert obs.state == "succeeded" and obs.exit_code == 0
    assert obs.result["outputs"]["ZSCONF_RUN_ID"] == "r-ok"
    assert "exec_job sleep" in (tmp_path / "runs" / "r-ok" / "runner.log").read_text()
    assert not actor_alive(ex, "zsconf:r-ok:0")  # the actor (and its CPUs) released


def test_failure_and_crash_exit_codes(ex: RayExecutor, tmp_path: Path) -> None:
    ex.submit(req(tmp_path, "r-fail", "fail"))
    ex.submit(req(tmp_path, "r-crash", "crash"))
    fail, crash = wait_done(ex, "r-fail"), wait_done(ex, "r-crash")
    assert (fail.state, fail.exit_code) == ("failed", 1)
    assert (crash.state, crash.exit_code) == ("failed", 3)


def test_cancel_stops_the_whole_group_on_its_node(ex: RayExecutor, tmp_path: Path) -> None:
    ex.submit(req(tmp_path, "r-group", "group", 300))
    grandchild = tmp_path / "runs" / "r-group" / "grandchild.pid"
    deadline = time.monotonic() + 30
    while not grandchild.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(grandchild.read_text())
    obs = ex.cancel("r-group", grace_s=2, reason="stopped by test")
    assert obs.state == "stopped" and obs.message == "stopped by test"
    assert obs.exit_code is not None  # the wrapper recorded how the runner ended
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the runner's child outlived the cancel"
    assert not actor_alive(ex, "zsconf:r-group:0")


def test_queue_waits_for_room_on_the_cluster_then_starts(ex: RayExecutor, tmp_path: Path) -> None:
    # Each job asks for all of a node's CPUs on both nodes: the second waits for the first.
    big = {"cpus": 8, "nodes": 2}
    one = req(tmp_path, "r-big1", "sleep", 2)
    two = req(tmp_path, "r-big2", "ok")
    one = JobRequest(**{**one.as_dict(), **big})
    two = JobRequest(**{**two.as_dict(), **big})
    started(ex, one)
    queued = ex.submit(two)
    assert queued.state == "queued" and queued.queue_position == 1
    assert "needs 2 node(s) with 8 CPU" in ex.observe("r-big2").message
    assert wait_done(ex, "r-big1").state == "succeeded"
    assert wait_done(ex, "r-big2").state == "succeeded"


def test_cards_by_index_and_the_tenants_quota(ex: RayExecutor, tmp_path: Path) -> None:
    """GPUs are handed out by Ray (CUDA_VISIBLE_DEVICES); zsconf's tenant quota still holds."""
    gpu = {"device": "cuda", "tenant": "acme", "max_cards_for_tenant": 2}
    first = JobRequest(**{**req(tmp_path, "r-g1", "sleep", 3).as_dict(), **gpu, "cards": 2})
    second = JobRequest(**{**req(tmp_path, "r-g2", "env").as_dict(), **gpu, "cards": 1})
    other = JobRequest(**{**req(tmp_path, "r-g3", "env").as_dict(), **gpu, "cards": 2, "tenant": "beta"})
    started(ex, first)
    waiting = ex.submit(second)
    assert waiting.state == "queued" and waiting.waiting_behind == ["r-g1"]
    assert ex.observe("r-g2").message == "tenant acme may use 2 cards and this job needs 1"
    ex.submit(other)  # another tenant: acme's quota does not hold it back
    assert not ex.observe("r-g3").message.startswith("tenant")
    done = {r: wait_done(ex, r) for r in ("r-g1", "r-g2", "r-g3")}
    assert all(o.state == "succeeded" for o in done.values())
    for run_id, cards in (("r-g1", 2), ("r-g2", 1), ("r-g3", 2)):
        visible = done[run_id].result["outputs"]["CUDA_VISIBLE_DEVICES"]
        assert len(visible.split(",")) == cards, visible


def test_refuses_what_no_node_has(ex: RayExecutor, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match=r"needs 1 node\(s\) with 3 GPU.*has 0 such node"):
        ex.submit(JobRequest(**{**req(tmp_path, "r-gpu", "ok").as_dict(), "device": "cuda", "cards": 3}))
    with pytest.raises(ExecutorError, match=r"needs 3 node\(s\).*has 2 such node"):
        ex.submit(JobRequest(**{**req(tmp_path, "r-3", "ok").as_dict(), "nodes": 3}))


def test_one_process_group_across_two_nodes(ex: RayExecutor, tmp_path: Path) -> None:
    wd = tmp_path / "runs" / "r-dist"
    wd.mkdir(parents=True)
    # The argv the engine builds for one host (2 processes); the executor makes each node's.
    argv = torchrun_argv(2, [DIST, str(wd)])
    # (It may queue for a moment: Ray's view of free resources lags the previous test's release.)
    ex.submit(JobRequest(run_id="r-dist", address="finetune/acme/dist", spec_path="", workdir=str(wd),
                         argv=argv, nodes=2, cpus=2))  # fmt: skip
    obs = wait_done(ex, "r-dist", timeout=120)
    assert obs.state == "succeeded", (wd / "runner.log").read_text()[-2000:]
    assert obs.result["outputs"] == {"world_size": 2, "rank_sum": 1.0}
    placement = ex._load("r-dist")["handle"]["placement"]
    assert len(set(placement["nodes"])) == 2  # one process group per node
    # Rank 1 ran in its own folder. (Its exit_code may be missing: once rank 0 has ended the run,
    # its actors are released, and a rank 1 still exiting goes with them.)
    assert (wd / "ranks" / "1" / "runner.log").is_file()


def test_adopted_by_another_process(ex: RayExecutor, ray_cluster: object, tmp_path: Path) -> None:
    """A daemon restarted elsewhere: a new process with only the handle finds the run by its Ray
    identity and can stop it."""
    handle = started(ex, req(tmp_path, "r-adopt", "sleep", 300))
    script = f"""
import json, sys
from zsconf.executors import ProcessHandle
from zsconf.executors.ray_cluster import RayExecutor
ex = RayExecutor({str(tmp_path / "other")!r}, address={ray_cluster.address!r}, namespace={ex.namespace!r})
h = ProcessHandle.from_dict(json.loads(sys.argv[1]))
alive = ex.adopt("r-adopt", h)
before = ex.observe("r-adopt").state
after = ex.cancel("r-adopt", grace_s=2).state
print(json.dumps([alive, before, after]))
"""
    out = subprocess.run([sys.executable, "-c", script, json.dumps(handle.as_dict())],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, "running", "stopped"]
    assert not actor_alive(ex, "zsconf:r-adopt:0")


def test_storage_every_node_must_see(ex: RayExecutor, tmp_path: Path) -> None:
    assert ex.unseen_storage(tmp_path) == []
    missing = ex.unseen_storage(tmp_path / "not-mounted")
    assert len(missing) == 3 and all(m.endswith(str(tmp_path / "not-mounted")) for m in missing)


def _instance_req(tmp_path: Path, index: int) -> InstanceRequest:
    wd = tmp_path / "inst" / str(index)
    wd.mkdir(parents=True, exist_ok=True)
    return InstanceRequest(deployment="deployment/acme/chat", index=index, workdir=str(wd),
                           argv=[sys.executable, SERVER, str(wd)], cpus=2, memory_gb=4)  # fmt: skip


def test_instances_spread_and_replaced_when_a_node_is_lost(
    ex: RayExecutor, ray_cluster: object, tmp_path: Path
) -> None:
    handles = ensure_instances(ex, [], 2, lambda i: _instance_req(tmp_path, i))
    assert all(ex.wait_healthy(h, timeout_s=60) for h in handles)
    nodes = [h.process.placement["nodes"][0] for h in handles]
    assert len(set(nodes)) == 2  # spread: one instance per node
    assert all(h.url == f"http://{h.process.host}:{h.port}" for h in handles)  # the node's address
    # The node of instance 1 leaves the cluster.
    lost = next(n for n in ray_cluster.nodes if n.node_id == nodes[1])
    ray_cluster.remove_node(lost)
    try:
        deadline = time.monotonic() + 60
        while ex.instance_alive(handles[1]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not ex.instance_alive(handles[1])
        assert ex.instance_alive(handles[0])
        again = ensure_instances(ex, handles, 2, lambda i: _instance_req(tmp_path, i))
        assert again[0] == handles[0]
        assert again[1].process.placement["nodes"] == [nodes[0]]  # on the surviving node
        assert ex.wait_healthy(again[1], timeout_s=60)
    finally:
        ray_cluster.add_node("node-extra")


def test_job_on_a_lost_node_is_lost(ex: RayExecutor, ray_cluster: object, tmp_path: Path) -> None:
    handle = started(ex, req(tmp_path, "r-lost", "sleep", 300))
    node = next(n for n in ray_cluster.nodes if n.node_id == handle.placement["nodes"][0])
    pid = handle.pid
    ray_cluster.remove_node(node)
    try:
        obs = wait_done(ex, "r-lost")
        assert obs.state == "lost" and "lost with its node" in obs.message
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the process outlived its node"
    finally:
        ray_cluster.add_node("node-extra2")


BAD_STACK = """\
platform:
  device: cpu
  default_tenant: a
  executor: {kind: ray, address: "127.0.0.1:1"}
tenants:
  a: {}
models:
  base: {base: debug/tiny-qwen2}
"""


def test_a_cluster_nobody_runs_and_an_unknown_kind_are_clear_errors(tmp_path: Path) -> None:
    zsconf = str(Path(sys.executable).parent / "zsconf")
    (tmp_path / "stack.yaml").write_text(BAD_STACK)
    plan = subprocess.run([zsconf, "plan"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "Error: cannot reach the Ray cluster at 127.0.0.1:1 (platform.executor.address)" in plan.stdout
    assert "Traceback" not in plan.stdout + plan.stderr
    apply = subprocess.run([zsconf, "apply", "--auto-approve"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert apply.returncode != 0 and "cannot reach the Ray cluster" in apply.stdout + apply.stderr
    (tmp_path / "stack.yaml").write_text(BAD_STACK.replace("kind: ray", "kind: slurm"))
    bad = subprocess.run([zsconf, "validate"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "stack.yaml:4: platform.executor.kind: Input should be 'local' or 'ray'" in bad.stdout + bad.stderr
