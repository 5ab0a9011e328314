"""Crash windows found by killing zsconf at the wrong instant, each replayed as processes with
SIGKILL at an exact point (`ZSCONF_TEST_KILL_AT`), then what a person would do next:

- the daemon killed after a healing pass started a new model server and before it routed the
  gateway to it: the next daemon must repair the routing (status and routing read one truth);
- `zsconf apply` killed after a service group's key was created and before it was shown: the key
  is not lost, and the re-apply converges the gateway even though the plan has no change.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import test_plan
from test_daemon_run import DEPLOY_STACK, DaemonProc, cleanup, eventually, instances, serving
from test_plan import make_stack

engine_env = test_plan.engine_env  # fixture: fake runners on PYTHONPATH

APP = "service_groups:\n  app: {services: [chat], keys: 1}\n"


def _ask(gateway: str, key: str) -> int:
    """HTTP status of one chat call through the gateway."""
    try:
        r = httpx.post(f"{gateway}/chat/completions", timeout=10, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    except httpx.HTTPError:
        return 0
    return r.status_code


def test_daemon_killed_between_starting_a_server_and_routing_to_it(tmp_path: Path, engine_env: Path) -> None:
    from zsconf.engine import Engine
    from zsconf.keys import create_key

    stack = make_stack(tmp_path / "s", DEPLOY_STACK + APP)
    eng = Engine(stack)
    st = eng.store
    daemons: list[DaemonProc] = []
    try:
        first = DaemonProc(stack)
        daemons.append(first)
        eventually(lambda: serving(st, 1) and eng.gateway_url(), what="a serving instance and the gateway")
        secret, _ = create_key(st, "acme", "app")
        gateway = eng.gateway_url()
        assert gateway
        eventually(lambda: _ask(gateway, secret) == 200, 30, "the gateway answering")
        assert first.terminate() == 0  # servers and gateway keep running

        # The server dies; a daemon heals it and is SIGKILLed right after starting the new one.
        (old,) = serving(st, 1).values()  # type: ignore[union-attr]
        os.kill(old[0], signal.SIGKILL)
        healer = DaemonProc(stack, env={**os.environ, "ZSCONF_TEST_KILL_AT": "after_instance_running"})
        daemons.append(healer)
        assert healer.proc.wait(timeout=60) == -signal.SIGKILL, healer.text()
        started = [r for r in st.runs("deployment/acme/chat") if r.status == "running"]
        assert len(started) == 1 and instances(st) != [started[0].run_id]  # routing names the dead one

        # The next daemon repairs the routing: calls succeed, and the status says so.
        third = DaemonProc(stack)
        daemons.append(third)
        eventually(lambda: _ask(gateway, secret) == 200, 60, "a call through the gateway to succeed")
        assert instances(st) == [r.run_id for r in started]
        from daemon.status import read_statuses

        eventually(lambda: read_statuses(st)["deployment/acme/chat"].health == "Healthy", 30, "Healthy")
        assert third.terminate() == 0
    finally:
        cleanup(daemons, stack)
        eng.close()


def test_apply_killed_after_creating_a_key_loses_nothing(tmp_path: Path, engine_env: Path) -> None:
    import re
    import subprocess
    import sys

    from zsconf.engine import Engine

    stack = make_stack(tmp_path / "s", DEPLOY_STACK + APP)
    argv = [sys.executable, "-m", "zsconf.cli.main", "apply", str(stack), "--auto-approve", "--wait"]
    eng = Engine(stack)
    try:
        killed = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "ZSCONF_TEST_KILL_AT": "after_key"})  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert "zs-" not in killed.stdout  # created and stored hashed, never shown
        again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        (key,) = re.findall(r"^  (zs-\S+)$", again.stdout, re.M)
        assert "New API keys for service_group/acme/app" in again.stdout
        gateway = eng.gateway_url()  # started by the re-apply, with or without a change to make
        assert gateway and f"Gateway: {gateway}" in again.stdout
        eventually(lambda: _ask(gateway, key) == 200, 30, "the recovered key to work")
        third = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0 and "zs-" not in third.stdout  # shown once
        assert "No changes" in third.stdout
        # A gateway that died: plan says so (exit 2), and apply restarts it with nothing to change.
        (gw,) = [h for h in eng.executor.list_instances() if h.deployment == "platform/gateway"]
        os.killpg(gw.pid, signal.SIGKILL)
        eventually(lambda: not eng.executor.instance_alive(gw), 10, "the gateway to die")
        plan = subprocess.run([sys.executable, "-m", "zsconf.cli.main", "plan", str(stack), "--detailed-exitcode"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert plan.returncode == 2 and "platform/gateway: the gateway is not running" in plan.stdout
        assert subprocess.run(argv, capture_output=True, text=True, timeout=120).returncode == 0
        gateway = eng.gateway_url()
        assert gateway is not None
        eventually(lambda: _ask(gateway, key) == 200, 30, "the restarted gateway to answer")
    finally:
        cleanup([], stack)
        eng.close()


def _unused(_: Any) -> None:
    _ = engine_env
