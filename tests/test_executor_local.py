"""Local executor with real child processes (tests/fake_runners/exec_*.py): lifecycle, exit codes,
process-group cancel, adoption from a new Python process, the card queue, visible devices."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsconf.errors import ExecutorError
from zsconf.executors import JobRequest, ProcessHandle, get_executor
from zsconf.executors.local import LocalExecutor
from zsconf.executors.procs import group_pids, process_start_time
from zsconf.registry import torchrun_argv

FAKE = Path(__file__).parent / "fake_runners"
JOB = str(FAKE / "exec_job.py")


@pytest.fixture
def ex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalExecutor:
    monkeypatch.delenv("ZSCONF_HOST_CARDS", raising=False)
    e = get_executor("local", root=tmp_path / "exec")
    yield e
    # No orphans: stop whatever a failing test left running.
    for rec in e._records():
        if rec["state"] in ("running", "queued"):
            e.cancel(rec["request"]["run_id"], grace_s=0.5)


def req(tmp_path: Path, run_id: str, mode: str, seconds: float = 0, **kw: object) -> JobRequest:
    wd = tmp_path / "runs" / run_id
    return JobRequest(
        run_id=run_id, address=f"finetune/acme/{run_id}", spec_path="", workdir=str(wd),
        argv=[sys.executable, JOB, str(wd), mode, str(seconds)], **kw,
    )  # fmt: skip


def wait_done(ex: LocalExecutor, run_id: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = ex.observe(run_id)
        if obs.finished:
            return obs
        time.sleep(0.05)
    raise AssertionError(f"{run_id} did not finish: {ex.observe(run_id)}")


def test_succeeded_with_result_and_log(ex: LocalExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-ok", "sleep", 0.3))
    assert sub.state == "running" and sub.handle is not None
    assert sub.handle.pgid == sub.handle.pid
    assert ex.observe("r-ok").state == "running"
    obs = wait_done(ex, "r-ok")
    assert obs.state == "succeeded" and obs.exit_code == 0
    assert obs.result["outputs"]["ZSCONF_RUN_ID"] == "r-ok"
    assert obs.ended_at >= obs.started_at
    assert "exec_job sleep" in (tmp_path / "runs/r-ok/runner.log").read_text()


@pytest.mark.parametrize(("mode", "code"), [("fail", 1), ("crash", 3)])
def test_failures_carry_exit_code(ex: LocalExecutor, tmp_path: Path, mode: str, code: int) -> None:
    ex.submit(req(tmp_path, f"r-{mode}", mode))
    obs = wait_done(ex, f"r-{mode}")
    assert obs.state == "failed" and obs.exit_code == code
    assert (obs.result is None) == (mode == "crash")


def test_missing_program_fails_with_127(ex: LocalExecutor, tmp_path: Path) -> None:
    wd = tmp_path / "runs/r-missing"
    ex.submit(
        JobRequest(run_id="r-missing", address="a", spec_path="", workdir=str(wd), argv=["/nonexistent/x"])
    )
    obs = wait_done(ex, "r-missing")
    assert obs.state == "failed" and obs.exit_code == 127


def test_submit_is_idempotent(ex: LocalExecutor, tmp_path: Path) -> None:
    a = ex.submit(req(tmp_path, "r-idem", "sleep", 2))
    b = ex.submit(req(tmp_path, "r-idem", "sleep", 2))
    assert a.handle == b.handle
    ex.cancel("r-idem", grace_s=1)


def test_cancel_kills_whole_group(ex: LocalExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-group", "group", 60))
    gc_file = tmp_path / "runs/r-group/grandchild.pid"
    deadline = time.monotonic() + 10
    while not gc_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(gc_file.read_text())
    assert len(group_pids(sub.handle.pgid)) >= 3  # wrapper, runner, grandchild
    obs = ex.cancel("r-group", grace_s=2)
    assert obs.state == "stopped"
    assert group_pids(sub.handle.pgid) == []
    assert process_start_time(grandchild) is None


def test_adopt_from_new_process_and_mismatch_is_lost(ex: LocalExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-adopt", "sleep", 1.0))
    h = sub.handle.as_dict()
    code = f"""
import json, sys
from zsconf.executors import ProcessHandle
from zsconf.executors.local import LocalExecutor
import dataclasses
ex = LocalExecutor(root={str(tmp_path / "exec2")!r})
h = ProcessHandle.from_dict(json.loads(sys.argv[1]))
bad = dataclasses.replace(h, start_time=h.start_time - 1)
out = {{"bad": ex.adopt("r-bad", bad), "bad_state": ex.observe("r-bad").state,
        "good": ex.adopt("r-adopt", h), "state": ex.observe("r-adopt").state}}
import time
while not ex.observe("r-adopt").finished:
    time.sleep(0.05)
o = ex.observe("r-adopt")
out.update(final=o.state, exit_code=o.exit_code)
print(json.dumps(out))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(h)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {
        "bad": False, "bad_state": "lost", "good": True, "state": "running", "final": "succeeded", "exit_code": 0,
    }  # fmt: skip


def test_adopt_finished_process_reads_exit_code(ex: LocalExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-gone", "crash"))
    while process_start_time(sub.handle.pid) is not None:
        time.sleep(0.05)
    fresh = LocalExecutor(root=tmp_path / "exec3")
    assert fresh.adopt("r-gone", ProcessHandle.from_dict(sub.handle.as_dict())) is False
    obs = fresh.observe("r-gone")
    assert obs.state == "failed" and obs.exit_code == 3


def test_queue_priority_then_age(ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "npu:2")
    assert ex.capacity().cards_total == 2
    a = ex.submit(req(tmp_path, "r-a", "sleep", 1.0, cards=2, device="npu"))
    assert a.state == "running" and a.handle.cards == [0, 1]
    assert ex.capacity().cards_free == 0
    old = ex.submit(req(tmp_path, "r-old", "ok", cards=2, device="npu", submitted_at=1.0))
    new = ex.submit(req(tmp_path, "r-new", "ok", cards=2, device="npu", submitted_at=2.0))
    high = ex.submit(req(tmp_path, "r-high", "ok", cards=1, device="npu", priority=5, submitted_at=3.0))
    cpu = ex.submit(req(tmp_path, "r-cpu", "ok", cards=0, device="cpu"))
    assert [old.state, new.state, high.state, cpu.state] == ["queued", "queued", "queued", "running"]
    obs = {r: ex.observe(r) for r in ("r-high", "r-old", "r-new")}
    assert [obs[r].queue_position for r in ("r-high", "r-old", "r-new")] == [1, 2, 3]
    assert obs["r-high"].waiting_behind == ["r-a"]
    assert obs["r-new"].waiting_behind == ["r-a", "r-high", "r-old"]
    assert "needs 2 npu cards, 0 free of 2" in obs["r-new"].message
    order = []
    deadline = time.monotonic() + 30
    while len(order) < 3 and time.monotonic() < deadline:
        for r in ("r-high", "r-old", "r-new"):
            o = ex.observe(r)
            if o.state != "queued" and r not in order:
                order.append(r)
        time.sleep(0.02)
    assert order == ["r-high", "r-old", "r-new"]
    for r in order:
        assert wait_done(ex, r).state == "succeeded"
    # Visible devices: the runner saw exactly its cards.
    seen = ex.observe("r-high").result["outputs"]
    assert seen["ASCEND_RT_VISIBLE_DEVICES"] in ("0", "1") and seen["CUDA_VISIBLE_DEVICES"] is None


def test_cuda_visible_devices(ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "cuda:4")
    ex.submit(req(tmp_path, "r-c1", "sleep", 0.5, cards=1, device="cuda"))
    ex.submit(req(tmp_path, "r-c3", "ok", cards=3, device="cuda"))
    assert wait_done(ex, "r-c3").result["outputs"]["CUDA_VISIBLE_DEVICES"] == "1,2,3"
    assert wait_done(ex, "r-c1").result["outputs"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_tenant_quota_queues_without_blocking_others(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "npu:4")
    ex.submit(
        req(tmp_path, "r-t1", "sleep", 1.0, cards=2, device="npu", tenant="acme", max_cards_for_tenant=2)
    )
    q = ex.submit(req(tmp_path, "r-t2", "ok", cards=1, device="npu", tenant="acme", max_cards_for_tenant=2))
    other = ex.submit(
        req(tmp_path, "r-o", "ok", cards=1, device="npu", tenant="beta", submitted_at=time.time() + 1)
    )
    assert q.state == "queued" and q.waiting_behind == ["r-t1"]
    assert other.state == "running"
    assert "tenant acme may use 2 cards" in ex.observe("r-t2").message
    assert ex.observe("r-t2").queue_position == 1  # the job that started is not counted
    assert wait_done(ex, "r-t2").state == "succeeded"


def test_too_big_for_host_is_an_error(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "npu:2")
    with pytest.raises(ExecutorError, match="needs 8 npu cards; this host has 2"):
        ex.submit(req(tmp_path, "r-big", "ok", cards=4, nodes=2, device="npu"))


def test_cancel_queued(ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "npu:1")
    ex.submit(req(tmp_path, "r-run", "sleep", 2, cards=1, device="npu"))
    assert ex.submit(req(tmp_path, "r-q", "ok", cards=1, device="npu")).state == "queued"
    assert ex.cancel("r-q").state == "stopped"
    ex.cancel("r-run", grace_s=1)
    assert ex.observe("r-q").state == "stopped"
    assert not (tmp_path / "runs/r-q/runner.log").exists()


def test_cpu_host_runs_card_jobs_at_once(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "cpu:0")
    assert ex.submit(req(tmp_path, "r-x", "ok", cards=8, device="npu")).state == "running"
    assert wait_done(ex, "r-x").state == "succeeded"


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(ex: LocalExecutor, tmp_path: Path) -> None:
    """The registry's torchrun (`--standalone`: torchrun picks the rendezvous port) with a fake
    distributed script as target: the executor runs the argv it is given."""
    wd = tmp_path / "runs/r-dist"
    argv = torchrun_argv(2, [str(FAKE / "exec_dist.py"), str(wd)])
    ex.submit(JobRequest(run_id="r-dist", address="a", spec_path="", workdir=str(wd), argv=argv))
    obs = wait_done(ex, "r-dist", timeout=120)
    assert obs.state == "succeeded", (wd / "runner.log").read_text()[-2000:]
    assert obs.result["outputs"] == {"world_size": 2, "rank_sum": 1.0}


def test_the_registry_decides_torchrun_and_the_executor_runs_the_argv(ex: LocalExecutor) -> None:
    from zsconf.registry import REGISTRY, runner_argv

    train, compress = REGISTRY["finetune"], REGISTRY["compression"]
    assert runner_argv(train, "s.json") == [sys.executable, "-m", "runners.train", "s.json"]
    four = runner_argv(train, "s.json", processes=4)
    assert four[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert four[-3:] == ["-m", "runners.train", "s.json"]
    assert "torch.distributed.run" in runner_argv(train, "s.json", deepspeed=True)
    assert runner_argv(compress, "s.json", processes=4)[1:] == ["-m", "runners.compress", "s.json"]
    multi = runner_argv(
        train, "/s.json", processes=8, nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29501
    )
    assert "--nnodes=2" in multi and "--node_rank=1" in multi and "--nproc_per_node=8" in multi
    assert "--master_addr=10.0.0.1" in multi and multi[-3:] == ["-m", "runners.train", "/s.json"]
    pet = runner_argv(train, "/s.json", processes=2, nodes=2, node_rank=None)
    assert "--node_rank=$PET_NODE_RANK" in pet and "--master_addr=$PET_MASTER_ADDR" in pet
    # The executor adds nothing of its own: the argv, or `python -m module spec` without one.
    req = JobRequest(run_id="r", address="a", spec_path="s.json", workdir="/w", argv=four, cards=4)
    assert ex._job_argv(req) == four
    assert ex._job_argv(JobRequest(run_id="r", address="a", spec_path="s.json", workdir="/w", module="m")) == [
        sys.executable, "-m", "m", "s.json"
    ]  # fmt: skip


def test_import_is_light() -> None:
    code = (
        "import sys, zsconf.executors, zsconf.executors.local, zsconf.executors.supervise\n"
        "heavy = [m for m in ('torch', 'httpx', 'transformers', 'litestar', 'psutil') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_history_does_not_slow_a_pass(ex: LocalExecutor, tmp_path: Path) -> None:
    for i in range(3):
        ex.submit(req(tmp_path, f"r-h{i}", "ok"))
        wait_done(ex, f"r-h{i}")
    assert ex._records() == []
    assert len(list((ex.root / "runs").glob("*.json"))) == 3
    assert ex.observe("r-h1").state == "succeeded"  # finished runs stay observable


def test_observe_many(ex: LocalExecutor, tmp_path: Path) -> None:
    ex.submit(req(tmp_path, "r-m1", "ok"))
    wait_done(ex, "r-m1")
    got = ex.observe_many(["r-m1", "r-unknown"])
    assert got["r-m1"].state == "succeeded" and got["r-unknown"].state == "lost"


def test_adopt_given_the_runner_pid_takes_the_wrapper(ex: LocalExecutor, tmp_path: Path) -> None:
    sub = ex.submit(req(tmp_path, "r-runner", "group", 60))
    gc_file = tmp_path / "runs/r-runner/grandchild.pid"
    deadline = time.monotonic() + 10
    while not gc_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    runner = next(p for p in group_pids(sub.handle.pgid) if p != sub.handle.pid and "exec_job" in _cmdline(p))
    fresh = LocalExecutor(root=tmp_path / "exec4")
    h = ProcessHandle(runner, process_start_time(runner), runner, "h", str(tmp_path / "runs/r-runner"))
    assert fresh.adopt("r-runner", h)
    obs = fresh.cancel("r-runner", grace_s=2)
    assert obs.pid == sub.handle.pid and obs.state == "stopped"
    assert group_pids(sub.handle.pgid) == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_start_that_was_never_recorded_is_adopted_not_repeated(ex: LocalExecutor, tmp_path: Path) -> None:
    # A pass that spawned a job and died before saving the handle: the record says "queued" with
    # the spawning mark, and the process runs. The next pass must adopt it, not start a second one.
    r = req(tmp_path, "r-crash", "sleep", 1.0)
    h = ex._spawn(list(r.argv), Path(r.workdir), {}, "r-crash", [])
    ex._save(
        {"request": {**r.as_dict(), "submitted_at": 1.0}, "state": "queued", "handle": None, "spawning": True}
    )
    obs = ex.observe("r-crash")
    assert obs.state == "running" and obs.pid == h.pid
    assert wait_done(ex, "r-crash").state == "succeeded"
    assert (tmp_path / "runs/r-crash/runner.log").read_text().count("exec_job sleep") == 1
