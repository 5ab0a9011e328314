"""Deployment instances (real server processes on free ports, health, graceful stop, a killed
instance detected and restarted), the restart-policy table, and auto-stop."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from schemas.jobs import AutoRestart
from zsconf.errors import ExecutorError
from zsconf.executors import InstanceRequest, JobRequest, enforce_auto_stop, ensure_instances, should_restart
from zsconf.executors.local import LocalExecutor
from zsconf.executors.procs import group_pids

FAKE = Path(__file__).parent / "fake_runners"


@pytest.fixture
def ex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalExecutor:
    monkeypatch.delenv("ZSCONF_HOST_CARDS", raising=False)
    e = LocalExecutor(root=tmp_path / "exec")
    yield e
    for h in e.list_instances():
        e.stop_instance(h, grace_s=1)
    for rec in e._records():
        if rec["state"] in ("running", "queued"):
            e.cancel(rec["request"]["run_id"], grace_s=0.5)


def inst_req(tmp_path: Path, index: int) -> InstanceRequest:
    wd = tmp_path / f"inst{index}-{time.monotonic_ns()}"
    return InstanceRequest(
        deployment="deployment/acme/chat", index=index, workdir=str(wd),
        argv=[sys.executable, str(FAKE / "exec_server.py"), str(wd)],
    )  # fmt: skip


def test_instances_start_on_free_ports_health_and_graceful_stop(ex: LocalExecutor, tmp_path: Path) -> None:
    handles = ensure_instances(ex, [], 2, lambda i: inst_req(tmp_path, i))
    assert [h.index for h in handles] == [0, 1]
    assert handles[0].port != handles[1].port
    for h in handles:
        assert ex.wait_healthy(h, timeout_s=20), Path(h.process.workdir, "runner.log").read_text()
        assert h.url == f"http://127.0.0.1:{h.port}"
    assert {h.pid for h in ex.list_instances()} == {h.pid for h in handles}
    # Scale down to one: the surplus instance gets SIGTERM and drains.
    kept = ensure_instances(ex, handles, 1, lambda i: inst_req(tmp_path, i))
    assert [h.index for h in kept] == [0]
    assert Path(handles[1].process.workdir, "drained").read_text() == "yes"
    assert not ex.instance_healthy(handles[1]) and group_pids(handles[1].process.pgid) == []
    ex.stop_instance(kept[0], grace_s=5)
    assert Path(kept[0].process.workdir, "drained").exists()
    assert ex.list_instances() == []


def test_killed_instance_is_unhealthy_and_restarted(ex: LocalExecutor, tmp_path: Path) -> None:
    (h,) = ensure_instances(ex, [], 1, lambda i: inst_req(tmp_path, i))
    assert ex.wait_healthy(h, timeout_s=20)
    os.killpg(h.process.pgid, signal.SIGKILL)
    # SIGKILL lands asynchronously: on a loaded machine the port can close before the process is
    # gone, so wait for the process itself, which is what ensure_instances looks at.
    deadline = time.monotonic() + 10
    while ex.instance_alive(h) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ex.instance_alive(h)
    assert not ex.instance_healthy(h)
    (h2,) = ensure_instances(ex, [h], 1, lambda i: inst_req(tmp_path, i))
    assert h2.pid != h.pid and h2.index == 0
    assert ex.wait_healthy(h2, timeout_s=20)


def test_instance_port_substitution(ex: LocalExecutor, tmp_path: Path) -> None:
    wd = tmp_path / "p"
    code = "import os,sys; open(sys.argv[1],'w').write(sys.argv[2] + ' ' + os.environ['ZSCONF_PORT'])"
    h = ex.start_instance(
        InstanceRequest(
            deployment="d",
            index=0,
            workdir=str(wd),
            port=0,
            argv=[sys.executable, "-c", code, str(wd / "p"), "{port}"],
        )
    )
    deadline = time.monotonic() + 10
    while not (wd / "p").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (wd / "p").read_text() == f"{h.port} {h.port}"


@pytest.mark.parametrize(
    ("exit_code", "attempts", "in_a_row", "policy", "expected"),
    [
        (0, 0, 0, {}, False),  # success never restarts
        (3, 0, 1, {}, True),  # crash = environment fault, default max 3
        (-9, 0, 1, {}, True),  # killed by a signal
        (None, 0, 1, {}, True),  # lost process
        (1, 0, 1, {}, False),  # user/data failure: not without unconditional
        (3, 3, 1, {}, False),  # default max_restarts 3 reached
        (3, 2, 3, {}, True),  # in-a-row limit is for unconditional mode only
        (3, 5, 1, {"max_restarts": 128}, True),
        (3, 0, 1, {"enabled": False}, False),
        (1, 0, 1, {"unconditional": True}, True),
        (1, 2, 3, {"unconditional": True, "max_restarts": 10}, True),  # third restart in a row
        (1, 3, 4, {"unconditional": True, "max_restarts": 10}, False),  # a fourth in a row: no
        (3, 3, 4, {"unconditional": True, "max_restarts": 10}, False),
        (3, 1, 1, {"unconditional": True, "max_restarts": 1}, False),  # max_restarts still applies
    ],
)
def test_restart_policy(
    exit_code: int | None, attempts: int, in_a_row: int, policy: dict, expected: bool
) -> None:
    assert should_restart(exit_code, attempts, in_a_row, policy) is expected
    assert should_restart(exit_code, attempts, in_a_row, AutoRestart(**policy)) is expected


def test_auto_stop(ex: LocalExecutor, tmp_path: Path) -> None:
    wd = tmp_path / "r"
    argv = [sys.executable, str(FAKE / "exec_job.py"), str(wd), "sleep", "60"]
    ex.submit(JobRequest(run_id="r-long", address="a", spec_path="", workdir=str(wd), argv=argv))
    assert enforce_auto_stop(ex, "r-long", 3600) is None
    assert enforce_auto_stop(ex, "r-long", None) is None
    obs = enforce_auto_stop(ex, "r-long", 10, grace_s=2, now=time.time() + 11)
    assert obs is not None and obs.state == "stopped" and obs.message == "auto_stop: ran longer than 10 s"
    assert obs.exit_code == -15  # the runner got SIGTERM; the wrapper recorded it
    assert obs.pid is not None and group_pids(obs.pid) == []


def test_latest_checkpoint(tmp_path: Path) -> None:
    from zsconf.executors.supervise import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step in (5, 40, 120, 9):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".checkpoint-200.tmp").mkdir()  # being written: not a checkpoint
    assert latest_checkpoint(tmp_path).name == "checkpoint-120"


def test_instances_hold_cards_and_jobs_queue_behind_them(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSCONF_HOST_CARDS", "npu:2")
    r = inst_req(tmp_path, 0)
    h = ex.start_instance(InstanceRequest(**{**r.__dict__, "cards": 1, "device": "npu"}))
    assert h.process.cards == [0]
    assert ex.wait_healthy(h, timeout_s=20)
    assert ex.capacity().cards_free == 1
    wd = tmp_path / "job"
    argv = [sys.executable, str(FAKE / "exec_job.py"), str(wd), "ok"]
    sub = ex.submit(
        JobRequest(run_id="r-2", address="a", spec_path="", workdir=str(wd), argv=argv, cards=2, device="npu")
    )
    assert sub.state == "queued"
    with pytest.raises(ExecutorError, match="needs 2 npu cards, 1 free of 2"):
        ex.start_instance(InstanceRequest(**{**inst_req(tmp_path, 1).__dict__, "cards": 2, "device": "npu"}))
    ex.stop_instance(h, grace_s=5)
    deadline = time.monotonic() + 20
    while not ex.observe("r-2").finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ex.observe("r-2").result["outputs"]["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
