"""The daemon as a real process (`python -m zsconf.cli.main daemon`) on a stack with the fake
runners (tests/fake_runners): edits are followed with no manual command, a bad edit is reported
and not fatal, a killed model server is restarted, orphans are kept (and deleted with --prune),
SIGTERM leaves work running and the next daemon adopts it without restarting anything, and
SIGKILL during an apply at each crash point, then a restart, finishes with no run started twice.

`DaemonProc` and the stacks are imported by tests/test_daemon_lease.py (two daemons, one store).
Every test kills its daemons and every process the state knows in a `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_plan
from test_apply import _live, _starts
from test_plan import STACK, make_stack, stop_all

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH, start log

REPO = Path(__file__).resolve().parent.parent

DEPLOY_STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
deployments:
  chat: {model: base, engine: embedded, instances: 1}
"""

TWO_DEPLOYMENTS = DEPLOY_STACK + "  chat2: {model: base, engine: embedded, instances: 1}\n"

# The test_plan pipeline (fine-tune -> compression, evaluation -> deployment) without the service
# group: the gateway process is the lead's tests' business, not the daemon's.
PIPELINE = STACK.split("service_groups:")[0]


def eventually(check: Callable[[], Any], seconds: float = 30.0, what: str = "") -> Any:
    """The first truthy value of `check()` within `seconds`, else fail naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what or check}")
        time.sleep(0.1)


class DaemonProc:
    """`zsconf daemon` in a child process, its stderr in a file the test reads."""

    def __init__(self, stack: Path, *args: str, env: dict[str, str] | None = None, name: str = "d") -> None:
        self.log = stack.parent / f"{name}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "zsconf.cli.main", "daemon", str(stack), "--interval", "3s",
                "--lease", "3s", *args]  # fmt: skip
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env or dict(os.environ), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_line(self, needle: str, seconds: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and needle not in self.text():
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.text()}")
            return needle in self.text()

        eventually(seen, seconds, f"{needle!r} in the daemon's log")

    def terminate(self, seconds: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=seconds)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def cleanup(daemons: list[DaemonProc], stack: Path, state_url: str | None = None) -> None:
    """Kill the daemons, then every process the state and the executor know of."""
    from zsconf.engine import Engine

    for d in daemons:
        d.kill()
    eng = Engine(stack, state_url)
    try:
        stop_all(eng)
    finally:
        eng.close()


def instances(store: Any, address: str = "deployment/acme/chat") -> list[str]:
    row = store.resource(address)
    return [i["run_id"] for i in (row.outputs.get("instances") or [])] if row is not None else []


def serving(store: Any, n: int, address: str = "deployment/acme/chat") -> dict[str, list[int]] | None:
    """run id -> pids once `address` has exactly n recorded instances, each one process alive."""
    ids = instances(store, address)
    live = _live(set(ids))
    return live if len(ids) == n and len(live) == n and all(len(p) == 1 for p in live.values()) else None


def events(store: Any, name: str, address: str | None = None) -> list[Any]:
    return [e for e in store.events(0, address, limit=10000) if e.event == name]


def test_daemon_follows_edits_survives_bad_yaml_heals_and_hands_over_on_sigterm(
    tmp_path: Path, engine_env: Path
) -> None:
    from daemon.status import read_statuses
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", DEPLOY_STACK)
    d = DaemonProc(stack)
    daemons = [d]
    eng = Engine(stack)
    st = eng.store
    try:
        first = eventually(lambda: serving(st, 1), what="one instance serving")
        (kept,) = first
        # An edit of `instances` in the YAML: a new serving instance, no manual command.
        (stack / "stack.yaml").write_text(DEPLOY_STACK.replace("instances: 1", "instances: 2"))
        two = eventually(lambda: serving(st, 2), what="two instances serving")
        assert kept in two and two[kept] == first[kept]  # the first one kept, not restarted
        # A bad edit: reported with the file and line, the daemon lives, what runs keeps running.
        (stack / "stack.yaml").write_text(DEPLOY_STACK.replace("instances: 1", "instances: [2"))
        err = eventually(lambda: events(st, "plan_error"), what="a plan_error event")[-1]
        assert f"{stack / 'stack.yaml'}:" in err.message and "YAML" in err.message, err.message
        sts = eventually(lambda: read_statuses(st).get("deployment/acme/chat", None), what="a status")
        eventually(lambda: read_statuses(st)["deployment/acme/chat"].sync == "Unknown", what="Unknown")
        sts = read_statuses(st)["deployment/acme/chat"]
        assert "stack.yaml:7" in sts.reason, sts.reason  # the line of `chat:`
        assert d.proc.poll() is None and serving(st, 2) == two
        (stack / "stack.yaml").write_text(DEPLOY_STACK.replace("instances: 1", "instances: 2"))
        eventually(lambda: events(st, "plan_recovered"), what="plan_recovered")
        eventually(lambda: read_statuses(st)["deployment/acme/chat"].sync == "Synced", what="Synced")
        # A killed model server is restarted (noticed by the run poll, not the 3 s interval).
        victim = sorted(two)[0]
        os.kill(two[victim][0], signal.SIGKILL)
        healed = eventually(lambda: (s := serving(st, 2)) and victim not in s and s, what="a replacement")
        assert len(healed) == 2
        # SIGTERM: exit 0, lease released, discovery removed, servers left running.
        assert d.terminate() == 0, d.text()
        assert "daemon stopped; jobs, model servers and the gateway keep running" in d.text()
        assert not (stack / ".zsconf" / "daemon.json").exists()
        assert serving(st, 2) == healed
        starts = len(_starts(engine_env))
        # A new daemon adopts them by pid and start time: nothing restarted, nothing started.
        d2 = DaemonProc(stack, name="d2")
        daemons.append(d2)
        d2.wait_line("ready: first pass")
        info = json.loads((stack / ".zsconf" / "daemon.json").read_text())
        assert info["pid"] == d2.pid and info["leader"] is True and info["admin_url"]
        time.sleep(1.5)  # a run poll and another chance to (wrongly) act
        assert serving(st, 2) == healed
        assert len(_starts(engine_env)) == starts
        assert d2.terminate() == 0
    finally:
        cleanup(daemons, stack)
        eng.close()


def test_removed_resource_is_an_orphan_until_prune(tmp_path: Path, engine_env: Path) -> None:
    from daemon.status import read_statuses
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", TWO_DEPLOYMENTS)
    d = DaemonProc(stack)
    daemons = [d]
    eng = Engine(stack)
    st = eng.store
    try:
        eventually(lambda: serving(st, 1) and serving(st, 1, "deployment/acme/chat2"), what="both up")
        other = serving(st, 1, "deployment/acme/chat2")
        (stack / "stack.yaml").write_text(DEPLOY_STACK)
        (ev,) = eventually(lambda: events(st, "orphan", "deployment/acme/chat2"), what="orphan event")
        assert "--prune" in ev.message
        status = eventually(lambda: read_statuses(st).get("deployment/acme/chat2"), what="a status")
        eventually(lambda: "orphan" in read_statuses(st)["deployment/acme/chat2"].reason, what="orphan")
        status = read_statuses(st)["deployment/acme/chat2"]
        assert status.sync == "OutOfSync"
        time.sleep(1.0)
        assert serving(st, 1, "deployment/acme/chat2") == other  # kept running
        # The admin API (token-protected) shows the daemon's view and can ask for a pass.
        import httpx

        info = json.loads((stack / ".zsconf" / "daemon.json").read_text())
        token = (stack / ".zsconf" / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(info["admin_url"] + "/api/status", timeout=10).status_code == 401
        body = httpx.get(info["admin_url"] + "/api/status", headers=auth, timeout=10).json()
        assert body["leader"] is True
        assert any(
            x["address"] == "deployment/acme/chat2" and x["sync"] == "OutOfSync" for x in body["statuses"]
        )
        plan = httpx.get(info["admin_url"] + "/api/plan", headers=auth, timeout=10).json()
        assert {c["address"]: c["action"] for c in plan["changes"]}["deployment/acme/chat2"] == "-"
        r = httpx.post(info["admin_url"] + "/api/sync", params={"reason": "test"}, headers=auth, timeout=10)
        assert r.status_code == 202
        d.wait_line("sync requested: test")
        assert d.terminate() == 0
        d2 = DaemonProc(stack, "--prune", name="d2")
        daemons.append(d2)
        eventually(lambda: st.resource("deployment/acme/chat2") is None, what="chat2 deleted")
        eventually(lambda: not _live(set(other)), what="chat2's server stopped")
        assert serving(st, 1) is not None  # the one still declared is untouched
        assert d2.terminate() == 0
    finally:
        cleanup(daemons, stack)
        eng.close()


@pytest.mark.parametrize(
    "point", ["after_intent", "after_start", "after_submit", "after_version", "after_instance_start"]
)
def test_sigkill_during_apply_then_restart_runs_nothing_twice(
    tmp_path: Path, engine_env: Path, point: str
) -> None:
    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", PIPELINE)
    d = DaemonProc(stack, env={**os.environ, "ZSCONF_TEST_KILL_AT": point})
    daemons = [d]
    eng = Engine(stack)
    st = eng.store
    try:
        assert d.proc.wait(timeout=90) == -signal.SIGKILL, d.text()
        d2 = DaemonProc(stack, name="d2")
        daemons.append(d2)

        def done() -> bool:
            ev = st.resource("evaluation/acme/ev")
            return bool(ev and ev.status == "succeeded" and serving(st, 1))

        eventually(done, 90, "the pipeline to finish after the restart")
        d2.wait_line("ready: first pass")
        time.sleep(1.0)
        starts = _starts(engine_env)
        assert len(starts) == len(set(starts)), f"a run started twice: {starts}"
        assert len(starts) == 4, starts  # ft, cq, ev and one server instance
        for model in ("bot", "bot-q"):
            assert [v.version for v in st.model_versions("acme", model)] == [1]
        assert not eng.plan().actionable()
        assert d2.terminate() == 0
    finally:
        cleanup(daemons, stack)
        eng.close()


def test_gateway_follows_routing_edits_without_a_restart(tmp_path: Path, engine_env: Path) -> None:
    from zsconf.engine import Engine

    text = DEPLOY_STACK + "service_groups:\n  app: {services: [chat], keys: 1}\n"
    stack = make_stack(tmp_path / "s", text)
    d = DaemonProc(stack)
    eng = Engine(stack)
    st = eng.store
    try:
        eventually(lambda: serving(st, 1) and eng.gateway_url(), what="a serving instance and the gateway")
        (gw,) = [h for h in eng.executor.list_instances() if h.deployment == "platform/gateway"]
        config = stack / ".zsconf" / "gateway" / "config.json"
        (stack / "stack.yaml").write_text(text.replace("instances: 1", "instances: 2"))
        eventually(lambda: serving(st, 2), what="two instances serving")

        def routed() -> int:
            deps = json.loads(config.read_text())["deployments"]
            return sum(len(x.get("instances") or []) for x in deps)

        eventually(lambda: routed() == 2, what="the gateway config to route to both")
        # The same gateway process reloaded its config (SIGHUP through the executor's wrapper):
        # not restarted, and no second gateway started beside it.
        assert [h.pid for h in eng.executor.list_instances() if h.deployment == "platform/gateway"] == [
            gw.pid
        ]
        assert eng.executor.instance_alive(gw)
        gateways = [p for p in _gateway_pids() if str(stack) in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(gateways) == 1, gateways
        assert d.terminate() == 0
    finally:
        cleanup([d], stack)
        eng.close()


def st_done(eng: Any) -> bool:
    ev = eng.store.resource("evaluation/acme/ev")
    return bool(ev and ev.status == "succeeded" and serving(eng.store, 1))


def _gateway_pids() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"runners.gateway" in argv and b"zsconf.executors.wrap" not in argv:
                out.append(int(entry))
    return out


def test_a_crashed_job_is_restarted_from_its_checkpoint_and_the_pipeline_goes_on(
    tmp_path: Path, engine_env: Path
) -> None:
    from zsconf.engine import Engine

    starts = tmp_path / "ckpt-starts.log"
    env = {**os.environ, "ZSCONF_RUNNER_MODULE_FINETUNE": "fake_runners.ckpt_job", "CKPT_MODE": "crash_first",
           "CKPT_STARTS": str(starts), "CKPT_STEP_S": "0.1"}  # fmt: skip
    stack = make_stack(tmp_path / "s", PIPELINE)
    d = DaemonProc(stack, env=env)
    eng = Engine(stack)
    st = eng.store
    try:

        def done() -> bool:
            ev = st.resource("evaluation/acme/ev")
            return bool(ev and ev.status == "succeeded" and serving(st, 1))

        eventually(done, 90, "the pipeline to finish")
        (restart,) = events(st, "restarted", "finetune/acme/ft")
        assert restart.data["exit_code"] == 137 and restart.data["restart"] == 1
        # Two attempts: the first from scratch, the second from its checkpoint (step 2).
        assert [int(line.split()[1]) for line in starts.read_text().splitlines()] == [0, 2]
        assert [v.version for v in st.model_versions("acme", "bot")] == [1]
        assert d.terminate() == 0
    finally:
        cleanup([d], stack)
        eng.close()


def test_webhook_receiver_gets_the_subscribed_events(tmp_path: Path, engine_env: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from zsconf.engine import Engine

    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    text = PIPELINE.replace(
        "    output: {model: bot}\n",
        f"    output: {{model: bot}}\n    options: {{notify: {{events: [completed], webhook: '{hook}'}}}}\n",
        1,
    )
    stack = make_stack(tmp_path / "s", text)
    d = DaemonProc(stack)
    eng = Engine(stack)
    try:
        eventually(lambda: got, 60, "a webhook POST")
        eventually(lambda: st_done(eng), 60, "the pipeline to finish")
        time.sleep(1.0)  # a pass or two more: nothing else may arrive
        # Only what the resource subscribes to: its completion, once; nothing about the others.
        assert [(p["event"], p["address"]) for p in got] == [("completed", "finetune/acme/ft")], got
        assert d.terminate() == 0
    finally:
        server.shutdown()
        cleanup([d], stack)
        eng.close()
