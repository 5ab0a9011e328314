"""The gateway as the engine runs it: its config written from the state, its process kept alive.

Called by `zsconf.engine.apply` (after every apply, and by a deployment before it stops an old
instance, so no request is routed to a server that is going away) and by the daemon each pass
through `Engine.sync_gateway()`.

The gateway (`python -m runners.gateway SPEC.json`) is one process per stack, started through the
executor as the instance `platform/gateway#0`, so it is adopted by pid and start time like any
model server and survives the CLI and daemon restarts. Its files live under `.zsconf/gateway/`:
`spec.json` (GatewaySpec), `config.json` (GatewayConfig: deployments with their live instances,
service groups with limits and moderation; replaced atomically, the gateway reloads it by mtime),
and `upstream.key` (mode 0600): the internal key the gateway sends to model servers, which get it
as `ZSCONF_SERVE_API_KEY`. API keys themselves are read by the gateway from the state store
(hashes only); nothing here holds a client secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.errors import ExecutorError
from zsconf.privfile import create_private, write_private
from zsconf.registry import runner, runner_argv

if TYPE_CHECKING:
    from zsconf.executors import Executor

__all__ = [
    "GATEWAY",
    "GatewayInfo",
    "build_config",
    "gateway_dir",
    "gateway_url",
    "sync_gateway",
    "upstream_key",
]

GATEWAY = "platform/gateway"  # the executor's instance name for the gateway process
_PORT_ENV = "ZSCONF_GATEWAY_PORT"  # overrides platform.gateway.port (tests: 0 = a free port)


@dataclass(frozen=True)
class GatewayInfo:
    url: str  # OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    pid: int
    changed: bool  # config rewritten (or process started) by this call
    started: bool


def gateway_dir(stack_dir: Path) -> Path:
    return Path(stack_dir) / ".zsconf" / "gateway"


def upstream_key(stack_dir: Path) -> str:
    """The internal key between the gateway and the model servers: made once, kept 0600."""
    path = gateway_dir(stack_dir) / "upstream.key"
    if not path.exists():
        # Deployments applied in parallel may get here at once: one key wins, all read it.
        create_private(path, "zs-internal-" + secrets.token_urlsafe(24))
    return path.read_text().strip()


def build_config(rows: dict[str, Any], key: str, platform: Any = None) -> dict[str, Any]:
    """GatewayConfig (schemas/run_gateway.py) from the state's resource rows: deployments with the
    instances apply recorded as serving (and what they serve: the catalog's task, a text-to-image
    model's options), service groups with limits and moderation; from `platform.gateway`, what
    chat calls may carry as images and how long image URLs last."""
    deployments, groups = [], []
    for row in sorted(rows.values(), key=lambda r: r.address):
        spec = row.spec or {}
        if row.kind == "deployment":
            serving = row.status == "running" and spec.get("state", "running") == "running"
            # An adapter deployment is served by its host's instances, under its own name.
            host = rows.get((row.outputs or {}).get("adapter_on") or "")
            routed = row if host is None else host
            if host is not None:
                serving = (
                    serving
                    and host.status == "running"
                    and row.name in (host.outputs or {}).get("adapters", [])
                )
            instances = [
                {"id": f"{row.name}-{i}", "url": inst["endpoint"].rstrip("/") + "/v1"}
                for i, inst in enumerate((routed.outputs or {}).get("instances") or [])
                if serving and inst.get("endpoint")
            ]
            outputs = routed.outputs or {}
            deployments.append(
                {"tenant": row.tenant, "name": row.name, "instances": instances, "qps": spec.get("qps"),
                 "max_tokens_cap": spec.get("max_model_len") or 2048,
                 "moderation": bool(spec.get("content_moderation", True)),
                 "task": "text-generation" if host is not None else outputs.get("task", "text-generation"),
                 "images": None if host is not None else outputs.get("images")}
            )  # fmt: skip
        elif row.kind == "service_group":
            limits = spec.get("rate_limits") or {}
            moderation = spec.get("moderation") or {}
            groups.append(
                {"tenant": row.tenant, "name": row.name, "enabled": bool(spec.get("enabled", True)),
                 "services": list(spec.get("services") or []), "per_key": limits.get("per_key") or {},
                 "per_model": limits.get("per_model") or {}, "trial_tokens": spec.get("trial_tokens"),
                 "moderation": {"blocklist": list(moderation.get("blocklist") or []),
                                "check_output": bool(moderation.get("check_output", True))}}
            )  # fmt: skip
    gw = platform.gateway if platform is not None else None
    media = (
        {"image_hosts": list(gw.image_hosts), "max_image_bytes": int(gw.max_image_mb * 2**20)} if gw else {}
    )
    return {"version": 1, "upstream_api_key": key, "deployments": deployments, "groups": groups,
            "media": media, "image_url_ttl_s": gw.image_url_ttl if gw else 3600}  # fmt: skip


def _port(platform: Any) -> int:
    env = os.environ.get(_PORT_ENV)
    if env is not None and env.strip():
        return int(env)
    return int(platform.gateway.port) if platform is not None else 8000


def _host(platform: Any) -> str:
    return str(platform.gateway.host) if platform is not None else "127.0.0.1"


def _wait_reloaded(url: str, mtime: float, timeout_s: float = 5.0) -> bool:
    """Until the gateway's /health reports a config at least as new as `mtime` (it reloads by
    mtime every 0.5 s; the caller sends SIGHUP to make it immediate)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=1.0)
        try:
            conn.request("GET", "/health")
            body = json.loads(conn.getresponse().read() or b"{}")
            if float(body.get("config_mtime", -1)) >= mtime:
                return True
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    return False


def sync_gateway(
    store: Any, executor: Executor, stack_dir: Path, platform: Any = None, *, wait_reload: bool = False
) -> GatewayInfo | None:
    """Make the gateway match the state: config rewritten when it differs, the process started
    (or restarted after a port change or a crash), or stopped when the state has no service group.

    `wait_reload`: return only once the running gateway serves the new config (a deployment
    calls this before stopping an instance the old config routed to). Returns None when no
    gateway is needed. Raises ExecutorError when the gateway cannot start (e.g. port in use).
    """
    gdir = gateway_dir(stack_dir)
    gdir.mkdir(parents=True, exist_ok=True)
    with open(gdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the CLI's apply and the daemon may sync at once
        return _sync(store, executor, Path(stack_dir), platform, wait_reload)


def _sync(
    store: Any, executor: Executor, stack_dir: Path, platform: Any, wait_reload: bool
) -> GatewayInfo | None:
    import signal

    from zsconf.executors import InstanceHandle, InstanceRequest

    rows = store.resources()
    running = [h for h in executor.list_instances() if h.deployment == GATEWAY]
    if not any(r.kind == "service_group" for r in rows.values()):
        for h in running:
            executor.stop_instance(h, grace_s=10.0)  # SIGTERM: drains, flushes usage
        return None
    gdir = gateway_dir(stack_dir)
    config_path = gdir / "config.json"
    config = json.dumps(build_config(rows, upstream_key(stack_dir), platform), indent=1, sort_keys=True)
    try:
        changed = config_path.read_text() != config
    except FileNotFoundError:
        changed = True
    if changed:
        write_private(config_path, config)
    mtime = config_path.stat().st_mtime

    want_port = _port(platform)
    current: InstanceHandle | None = None
    for h in running:
        if executor.instance_alive(h) and (want_port in (0, h.port)) and current is None:
            current = h
        else:
            executor.stop_instance(h, grace_s=10.0)
    if current is not None:
        url = f"{current.url}/v1"
        if changed:
            os.kill(current.pid, signal.SIGHUP)  # reload now, not at the next mtime poll
            if wait_reload:
                _wait_reloaded(current.url, mtime)
        return GatewayInfo(url=url, pid=current.pid, changed=changed, started=False)

    from zsconf.executors.local import free_port

    port = want_port or free_port()
    run_dir = gdir / "run"
    spec = {"host": _host(platform), "port": port, "state_url": store.url, "config_path": str(config_path),
            "workdir": str(run_dir)}  # fmt: skip
    write_private(gdir / "spec.json", json.dumps(spec, indent=1))
    handle = executor.start_instance(
        InstanceRequest(deployment=GATEWAY, index=0, workdir=str(run_dir), spec_path=str(gdir / "spec.json"),
                        module=runner("gateway").module, argv=runner_argv(runner("gateway"), str(gdir / "spec.json")),
                        port=port, control_plane=True)
    )  # fmt: skip
    if not executor.wait_healthy(handle, timeout_s=60.0):
        executor.stop_instance(handle, grace_s=2.0)
        tail = ""
        with contextlib.suppress(OSError):
            tail = (run_dir / "runner.log").read_text()[-600:].strip()
        raise ExecutorError(
            f"the gateway did not start on {_host(platform)}:{port}"
            + (f": {tail.splitlines()[-1]}" if tail else "")
            + f" (log: {run_dir / 'runner.log'}; the port is platform.gateway.port)"
        )
    return GatewayInfo(url=f"{handle.url}/v1", pid=handle.pid, changed=True, started=True)


def gateway_url(executor: Executor) -> str | None:
    """The running gateway's OpenAI base URL, or None."""
    for h in executor.list_instances():
        if h.deployment == GATEWAY and executor.instance_alive(h):
            return f"{h.url}/v1"
    return None
