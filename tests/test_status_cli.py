"""`zsconf status | events | logs` (zsconf/cli/status_cmds.py), without a daemon (state store and
run folders read directly, statuses computed now) and with one (an AdminServer and its discovery
file in the test process; the CLI also once as a real subprocess).

The stack is applied for real for its plain resources (tenant, dataset, model folder), then the
state gets hand-made rows: an orphaned job with two attempts and an orphaned deployment with two
instances, each with a run folder holding a runner.log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_plan import make_stack
from typer.testing import CliRunner

from zsconf.state import ResourceRow, RunRow

REPO = Path(__file__).resolve().parent.parent
SMALL = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
"""
MORE = SMALL.replace("datasets:\n", "datasets:\n  extra: {path: data/faq.jsonl, format: alpaca}\n")


def invoke(*args: str) -> Any:
    from zsconf.cli.main import app

    return CliRunner().invoke(app, list(args))


def _add_run(store: Any, address: str, run_id: str, status: str, workdir: Path, log: str, **kw: Any) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "runner.log").write_text(log)
    store.add_run(RunRow(address=address, run_id=run_id, status=status, workdir=str(workdir), **kw))


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from zsconf.engine import Engine

    monkeypatch.delenv("ZSCONF_STATE_URL", raising=False)
    monkeypatch.setenv("ZSCONF_EXECUTOR_ROOT", str(tmp_path / "executor"))
    root = make_stack(tmp_path / "s", SMALL)
    eng = Engine(root)
    assert eng.apply(eng.plan(), wait=True).ok
    store = eng.store
    runs = tmp_path / "runs"
    store.put_resource(ResourceRow(address="finetune/acme/old", kind="finetune", tenant="acme", name="old",
                                   content_hash="h2", status="failed"))  # fmt: skip
    _add_run(
        store, "finetune/acme/old", "r-old1", "failed", runs / "r-old1", "attempt one\n", content_hash="h1"
    )
    _add_run(store, "finetune/acme/old", "r-old2", "failed", runs / "r-old2",
             "".join(f"iteration {i}/5 | lm loss 1.{i}\n" for i in range(1, 6)) + "Traceback: boom\n",
             content_hash="h2", error="boom")  # fmt: skip
    store.put_resource(ResourceRow(address="deployment/acme/chat", kind="deployment", tenant="acme",
                                   name="chat", spec={"instances": 2}, status="running"))  # fmt: skip
    for i in range(2):
        _add_run(store, "deployment/acme/chat", f"r-chat{i}", "running", runs / f"r-chat{i}",
                 f"serving on port 80{i}\nGET /v1/models 200\n", handle={"index": i})  # fmt: skip
    store.add_event("failed", "run r-old2 failed: boom", "finetune/acme/old")
    eng.close()
    (root / "stack.yaml").write_text(MORE)  # one dataset not applied yet
    return root


def test_status_without_daemon(stack: Path) -> None:
    r = invoke("status", str(stack), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["source"] == "computed"
    st = {s["address"]: s for s in data["statuses"]}
    assert (st["tenant/acme"]["sync"], st["tenant/acme"]["health"]) == ("Synced", "Healthy")
    assert (st["model/acme/base"]["sync"], st["model/acme/base"]["health"]) == ("Synced", "Healthy")
    assert (st["dataset/acme/extra"]["sync"], st["dataset/acme/extra"]["health"]) == ("OutOfSync", "Missing")
    old = st["finetune/acme/old"]
    assert (old["sync"], old["health"]) == ("OutOfSync", "Degraded") and "orphan" in old["reason"]
    assert "last apply failed: run r-old2 failed: boom" in old["reason"]
    chat = st["deployment/acme/chat"]
    # Refresh asked the executor: the hand-made instances have no process, so they are dead.
    assert chat["health"] == "Degraded" and "2 of 2 instances not running" in chat["reason"]

    r = invoke("status", str(stack))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["ADDRESS", "SYNC", "HEALTH", "SINCE", "REASON"]
    row = next(x for x in lines if x.startswith("tenant/acme "))
    assert row.split() == ["tenant/acme", "Synced", "Healthy", "-"]
    assert lines[-1].endswith("(no daemon: computed now)") and lines[-1].startswith("6 resources: 3 Synced")

    # A stack that does not load: sync Unknown with the error, health still from the state.
    (stack / "stack.yaml").write_text(SMALL + "bogus_key: 1\n")
    data = json.loads(invoke("status", str(stack), "--json").output)
    st = {s["address"]: s for s in data["statuses"]}
    assert st["tenant/acme"]["sync"] == "Unknown" and "bogus_key" in st["tenant/acme"]["reason"]
    assert st["tenant/acme"]["health"] == "Healthy"


def test_status_refuses_a_folder_that_is_not_a_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZSCONF_STATE_URL", raising=False)
    r = invoke("status", str(tmp_path))
    assert r.exit_code != 0 and "is not a stack" in str(r.exception)
    assert not (tmp_path / ".zsconf").exists()


def test_events_without_daemon(stack: Path) -> None:
    r = invoke("events", "-C", str(stack), "--json")
    assert r.exit_code == 0, r.output
    evs = [json.loads(x) for x in r.output.splitlines()]
    assert {"created", "failed"} <= {e["event"] for e in evs}
    r = invoke("events", "finetune/acme/old", "-C", str(stack))
    assert r.output.splitlines()[-1].endswith("failed           run r-old2 failed: boom")
    last = evs[-1]["id"]
    assert invoke("events", "-C", str(stack), "--since", str(last)).output == ""
    assert len(invoke("events", "-C", str(stack), "--since", str(last - 1)).output.splitlines()) == 1
    assert len(invoke("events", "-C", str(stack), "--since", "10m", "--json").output.splitlines()) == len(evs)
    assert len(invoke("events", "-C", str(stack), "--tail", "2").output.splitlines()) == 2
    assert len(invoke("events", "-C", str(stack), "--since", "10m", "--tail", "1").output.splitlines()) == 1
    r = invoke("events", "-C", str(stack), "--since", "yesterday")
    assert r.exit_code == 2 and "--since" in r.output


def test_logs_without_daemon(stack: Path) -> None:
    r = invoke("logs", "finetune/acme/old", "-C", str(stack))
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "iteration 1/5 | lm loss 1.1" and r.output.endswith(
        "Traceback: boom\n"
    )
    assert invoke("logs", "finetune/acme/old", "-C", str(stack), "--tail", "2").output == (
        "iteration 5/5 | lm loss 1.5\nTraceback: boom\n"
    )
    assert invoke("logs", "finetune/acme/old", "-C", str(stack), "--run", "r-old1").output == "attempt one\n"
    r = invoke("logs", "finetune/acme/old", "-C", str(stack), "--run", "r-nope")
    assert r.exit_code == 1 and "has no run r-nope" in str(r.exception)
    gw = stack / ".zsconf" / "gateway" / "run"
    gw.mkdir(parents=True)
    (gw / "runner.log").write_text("gateway ready on 127.0.0.1:8000\n")
    assert invoke("logs", "platform/gateway", "-C", str(stack)).output == "gateway ready on 127.0.0.1:8000\n"
    r = invoke("logs", "deployment/acme/chat", "-C", str(stack))
    assert sorted(r.output.splitlines()) == [
        "[i0] GET /v1/models 200", "[i0] serving on port 800",
        "[i1] GET /v1/models 200", "[i1] serving on port 801",
    ]  # fmt: skip


def _running_job(stack: Path, run_id: str) -> Path:
    from zsconf.state import open_store

    store = open_store(None, stack)
    wd = stack.parent / "runs" / run_id
    _add_run(store, "finetune/acme/old", run_id, "running", wd, "step 1\n", content_hash="h2")
    store.close()
    return wd / "runner.log"


def _finish_later(stack: Path, run_id: str, log: Path) -> threading.Thread:
    """Append two lines, then mark the run succeeded (what finish_runs would record)."""

    def work() -> None:
        from zsconf.state import open_store

        for line in ("step 2\n", "step 3\n"):
            time.sleep(0.3)
            with open(log, "a") as f:
                f.write(line)
        store = open_store(None, stack)
        store.update_run(run_id, status="succeeded")
        store.close()

    th = threading.Thread(target=work)
    th.start()
    return th


def test_logs_follow_without_daemon(stack: Path) -> None:
    log = _running_job(stack, "r-old3")
    th = _finish_later(stack, "r-old3", log)
    r = invoke("logs", "finetune/acme/old", "-C", str(stack), "-f")
    th.join()
    assert r.exit_code == 0, r.output
    assert r.output == "step 1\nstep 2\nstep 3\n"


class View:
    def __init__(self, stack_dir: Path) -> None:
        from zsconf.state import open_store

        self.stack_dir = stack_dir
        self.store = open_store(None, stack_dir)
        self.server: Any = None

    def current_plan(self) -> None:
        return None

    def trigger_sync(self, reason: str) -> None:
        pass

    def is_leader(self) -> bool:
        return True


@pytest.fixture
def daemon(stack: Path) -> Any:
    from daemon.admin import AdminServer, admin_token, remove_discovery, write_discovery
    from daemon.status import ResourceStatus, record_statuses
    from zsconf.executors.procs import process_start_time

    view = View(stack)
    record_statuses(view.store, {
        "tenant/acme": ResourceStatus("tenant/acme", "Synced", "Healthy", "", 0),
        "deployment/acme/chat": ResourceStatus("deployment/acme/chat", "Synced", "Progressing",
                                               "1 of 2 instances running", 0),
    })  # fmt: skip
    server = AdminServer(view, "127.0.0.1", 0, admin_token(stack)).start()
    view.server = server
    write_discovery(stack, {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
                            "admin_url": server.url, "leader": True, "started_at": time.time()})  # fmt: skip
    yield view
    remove_discovery(stack)
    server.stop()
    view.store.close()


def test_status_events_logs_through_the_daemon(stack: Path, daemon: View) -> None:
    data = json.loads(invoke("status", str(stack), "--json").output)
    assert data["source"] == "daemon"
    assert [(s["address"], s["health"]) for s in data["statuses"]] == [
        ("deployment/acme/chat", "Progressing"), ("tenant/acme", "Healthy"),
    ]  # fmt: skip
    out = invoke("status", str(stack)).output
    assert f"(daemon pid {os.getpid()} at http://127.0.0.1:" in out
    row = next(x for x in out.splitlines() if x.startswith("deployment/acme/chat "))
    cols = row.split()
    assert cols[1:3] == ["Synced", "Progressing"] and re.fullmatch(r"\d+s", cols[3]) and cols[4] == "ago"
    assert row.endswith("1 of 2 instances running")

    evs = [
        json.loads(x)
        for x in invoke("events", "-C", str(stack), "--json", "--tail", "100").output.splitlines()
    ]
    assert [e["event"] for e in evs][-2:] == ["status", "status"]  # written by record_statuses
    assert (
        invoke("events", "finetune/acme/old", "-C", str(stack))
        .output.rstrip()
        .endswith("run r-old2 failed: boom")
    )

    assert invoke("logs", "finetune/acme/old", "-C", str(stack), "--tail", "1").output == "Traceback: boom\n"
    log = _running_job(stack, "r-old4")
    th = _finish_later(stack, "r-old4", log)
    r = invoke("logs", "finetune/acme/old", "-C", str(stack), "--follow")
    th.join()
    assert r.exit_code == 0 and r.output == "step 1\nstep 2\nstep 3\n"


def test_cli_process_finds_the_daemon(stack: Path, daemon: View) -> None:
    """The real console entry point in its own process, reaching this process's admin server."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "zsconf.cli.main", "status", str(stack)], cwd=stack,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "deployment/acme/chat" in proc.stdout and f"daemon pid {os.getpid()}" in proc.stdout


def test_events_follow_survives_the_daemon_stopping(stack: Path, daemon: View) -> None:
    """`zsconf events -f` as a real process: new events arrive through the admin API; when the
    daemon goes away it goes on from the state store; Ctrl-C ends it with exit 0. Old history is
    not printed (`--since` the newest id)."""
    import queue
    import signal

    from daemon.records import newest_event_id

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    since = str(newest_event_id(daemon.store))
    proc = subprocess.Popen([sys.executable, "-m", "zsconf.cli.main", "events", "-f", "--json", "--since", since,
                             "-C", str(stack)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []  # read as it comes: a full stderr pipe would block the process
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    err_reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    err_reader.start()
    try:
        daemon.store.add_event("created", "through the daemon", "dataset/acme/faq")
        first = json.loads(lines.get(timeout=20))
        assert first["message"] == "through the daemon"
        server = daemon.server
        server.stop()
        daemon.store.add_event("created", "after the daemon stopped", "dataset/acme/faq")
        second = json.loads(lines.get(timeout=20))
        assert second["message"] == "after the daemon stopped" and second["id"] == first["id"] + 1
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=20) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 20 s after SIGINT; stderr: {''.join(errors)[-3000:]}")
        err_reader.join(5)
        assert lines.empty()
        assert "following the state store" in "".join(errors)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
