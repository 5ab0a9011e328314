"""Client of a running daemon's admin API (daemon/admin.py), found through `.zsconf/daemon.json`.

Called by the CLI's observability commands (`zsconf status`, `events`, `logs`): `connect(stack)`
returns an `AdminClient` when a daemon serves this stack, else None and the command reads the
state store directly. Light on purpose: httpx is imported only once a daemon.json exists, and
nothing here imports the daemon package or SQLAlchemy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsconf.errors import ZsconfError

__all__ = ["AdminClient", "AdminError", "connect"]


class AdminError(ZsconfError):
    """The daemon's admin API refused a call or could not be reached."""


def _pid_matches(pid: Any, start_time: Any) -> bool:
    """The discovery file's process is alive and is the same process (pid + start time, so a
    reused pid after a crash does not count)."""
    from zsconf.executors.procs import process_start_time

    now = process_start_time(pid) if isinstance(pid, int) and pid > 0 else None
    return now is not None and (start_time is None or float(now) == float(start_time))


def connect(stack_dir: str | Path, timeout: float = 0.5) -> AdminClient | None:
    """An `AdminClient` for the daemon of `stack_dir`, or None when none answers: no
    daemon.json, its process gone, no token, or GET /api/health not answering within `timeout`."""
    zs = Path(stack_dir).resolve() / ".zsconf"
    try:
        info = json.loads((zs / "daemon.json").read_text())
        token = (zs / "admin.token").read_text().strip()
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("admin_url") or not token:
        return None
    if not _pid_matches(info.get("pid"), info.get("start_time")):
        return None
    client = AdminClient(str(info["admin_url"]), token, info)
    try:
        client.health(timeout=timeout)
    except AdminError:
        client.close()
        return None
    return client


class AdminClient:
    """One method per admin route; each returns the route's JSON. Raises AdminError."""

    def __init__(self, url: str, token: str, info: dict[str, Any] | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.info = info or {}
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, timeout: float = 10.0, **params: Any) -> Any:
        import httpx

        params = {k: v for k, v in params.items() if v is not None}
        try:
            resp = self._http.request(method, path, params=params, timeout=timeout)
        except httpx.HTTPError as exc:
            raise AdminError(f"daemon admin API at {self.url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("error") or resp.text
            except ValueError:
                msg = resp.text
            raise AdminError(f"daemon admin API {method} {path}: HTTP {resp.status_code}: {msg}")
        return resp.json()

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        return self._call("GET", "/api/health", timeout=timeout)

    def statuses(self) -> dict[str, Any]:
        """{"leader": bool, "statuses": [{address, sync, health, reason, since}]}"""
        return self._call("GET", "/api/status")

    def resources(self, address: str | None = None) -> list[dict[str, Any]]:
        """Resource rows with "axes" (recorded status), "last_run" and a model's "versions"."""
        return self._call("GET", "/api/resources", address=address)["resources"]

    def events(
        self,
        since: int = 0,
        address: str | None = None,
        wait: float = 0.0,
        since_ts: float | None = None,
        tail: int | None = None,
    ) -> dict[str, Any]:
        """{"events": [...], "last_id": N} with id > `since` (and ts >= `since_ts`; `tail`: the
        newest N only); waits up to `wait` s (max 30) when there is none yet."""
        return self._call("GET", "/api/events", timeout=wait + 10.0, since=since, address=address,
                          wait=wait, since_ts=since_ts, tail=tail)  # fmt: skip

    def runs(self, address: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/runs", address=address)["runs"]

    def log(self, run_id: str, offset: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """{"data", "offset", "size", "status", "finished"} of the run's runner.log from `offset`."""
        return self._call("GET", f"/api/runs/{run_id}/log", timeout=wait + 10.0, offset=offset, wait=wait)

    def plan(self) -> dict[str, Any] | None:
        """The daemon's last plan as plan JSON, None before its first pass."""
        try:
            return self._call("GET", "/api/plan")
        except AdminError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def sync(self, reason: str = "requested from the CLI") -> None:
        self._call("POST", "/api/sync", reason=reason)
