"""Admin API (daemon/admin.py) served for real by AdminServer on loopback, called with httpx and
with the CLI's AdminClient: auth, events long-poll, run logs (offsets, UTF-8, follow), plan, sync
trigger, graceful stop, the token and discovery files, and `connect()`.

The daemon side is a small in-test DaemonView over a real SQLite store (helper B's daemon is the
real one; it implements the same protocol).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.admin import AdminServer, admin_token, read_discovery, remove_discovery, write_discovery
from daemon.status import ResourceStatus, record_statuses
from zsconf.cli.admin_client import AdminError, connect
from zsconf.plans import Action, Change, Plan
from zsconf.state import RunRow, Store, open_store


class View:
    """The DaemonView protocol, in-test: records sync triggers, serves a settable plan."""

    def __init__(self, stack_dir: Path, store: Store) -> None:
        self.stack_dir = stack_dir
        self.store = store
        self.plan: Plan | None = None
        self.syncs: list[str] = []
        self.leader = True

    def current_plan(self) -> Plan | None:
        return self.plan

    def trigger_sync(self, reason: str) -> None:
        self.syncs.append(reason)

    def is_leader(self) -> bool:
        return self.leader


@pytest.fixture
def served(tmp_path: Path) -> Any:
    stack = tmp_path / "stack"
    stack.mkdir()
    store = open_store(None, stack)
    view = View(stack, store)
    token = admin_token(stack)
    server = AdminServer(view, "127.0.0.1", 0, token).start()
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=40)
    yield view, server, http, token
    http.close()
    server.stop()
    store.close()


def test_every_route_needs_the_token(served: Any) -> None:
    view, server, http, token = served
    for path in ("/api/health", "/api/status", "/api/events", "/api/runs", "/api/plan", "/nope"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and "admin token" in r.json()["error"], path
        r = httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}x"})
        assert r.status_code == 401, path
        r = httpx.get(server.url + path, headers={"Authorization": token})  # no "Bearer "
        assert r.status_code == 401, path
    assert httpx.post(server.url + "/api/sync").status_code == 401
    assert view.syncs == []
    body = http.get("/api/health").json()
    assert body["ok"] is True and body["pid"] == os.getpid() and body["leader"] is True


def test_token_file_is_private_and_reused(tmp_path: Path) -> None:
    token = admin_token(tmp_path)
    path = tmp_path / ".zsconf" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and admin_token(tmp_path) == token
    path.chmod(0o644)
    assert admin_token(tmp_path) == token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["admin.token"]  # no temp files left


def test_events_long_poll_returns_when_an_event_lands(served: Any) -> None:
    view, _, http, _ = served
    first = view.store.add_event("created", "dataset created", "dataset/acme/faq")
    r = http.get("/api/events").json()
    assert [e["id"] for e in r["events"]] == [first.id] and r["last_id"] == first.id

    # Nothing new: waits `wait` seconds, then answers with nothing and the same cursor.
    t0 = time.monotonic()
    r = http.get("/api/events", params={"since": first.id, "wait": 0.5}).json()
    assert r == {"events": [], "last_id": first.id} and time.monotonic() - t0 >= 0.45

    # An event written by another thread (as the daemon's pass would) ends the wait early.
    timer = threading.Timer(0.3, lambda: view.store.add_event("status", "x", "deployment/acme/chat"))
    timer.start()
    t0 = time.monotonic()
    r = http.get("/api/events", params={"since": first.id, "wait": 20}).json()
    elapsed = time.monotonic() - t0
    timer.join()
    assert [e["event"] for e in r["events"]] == ["status"] and elapsed < 15  # not the full wait

    # Filters: address, tail, since_ts.
    view.store.add_event("created", "other", "tenant/acme")
    r = http.get("/api/events", params={"address": "tenant/acme"}).json()
    assert [e["message"] for e in r["events"]] == ["other"]
    r = http.get("/api/events", params={"tail": 2}).json()
    assert [e["message"] for e in r["events"]] == ["x", "other"]
    r = http.get("/api/events", params={"since_ts": time.time() + 60}).json()
    assert r["events"] == []


def _run(store: Store, workdir: Path, run_id: str = "r-1", status: str = "running") -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    store.add_run(RunRow(address="finetune/acme/ft", run_id=run_id, status=status, workdir=str(workdir)))


def test_run_log_offsets_utf8_and_follow(served: Any, tmp_path: Path) -> None:
    view, _, http, _ = served
    wd = tmp_path / "runs" / "r-1"
    _run(view.store, wd)
    assert http.get("/api/runs/r-nope/log").status_code == 404
    assert [
        r["run_id"] for r in http.get("/api/runs", params={"address": "finetune/acme/ft"}).json()["runs"]
    ] == ["r-1"]
    # No log yet: empty, offset 0.
    r = http.get("/api/runs/r-1/log").json()
    assert (r["data"], r["offset"], r["finished"]) == ("", 0, False)

    log = wd / "runner.log"
    raw = "iteration 1/3 | 损失 1.5\n".encode()
    cut = raw.index("损".encode()) + 1  # in the middle of a 3-byte character
    log.write_bytes(raw[:cut])
    r = http.get("/api/runs/r-1/log").json()
    assert r["data"] == "iteration 1/3 | " and r["offset"] == cut - 1  # partial char left for later
    with open(log, "ab") as f:
        f.write(raw[cut:])
    r = http.get("/api/runs/r-1/log", params={"offset": r["offset"]}).json()
    assert r["data"] == "损失 1.5\n" and r["offset"] == len(raw)
    assert http.get("/api/runs/r-1/log", params={"offset": -4}).json()["data"] == "1.5\n"

    # Follow: a writer appends lines, then the run ends; the reader gets every byte once.
    def writer() -> None:
        for i in range(2, 4):
            time.sleep(0.2)
            with open(log, "a") as f:
                f.write(f"iteration {i}/3\n")
        view.store.update_run("r-1", status="succeeded")

    th = threading.Thread(target=writer)
    th.start()
    got, offset = raw.decode(), len(raw)
    for _ in range(50):
        r = http.get("/api/runs/r-1/log", params={"offset": offset, "wait": 10}).json()
        got += r["data"]
        offset = r["offset"]
        if r["finished"]:
            break
    th.join()
    assert got == log.read_text() and r["status"] == "succeeded"


def test_status_plan_and_sync(served: Any) -> None:
    view, _, http, _ = served
    assert http.get("/api/plan").status_code == 404
    view.plan = Plan(
        changes=[Change(address="tenant/acme", kind="tenant", action=Action.CREATE, after={})],
        state_serial=3, state_lineage="abc", stack_hash="h", stack_dir=str(view.stack_dir),
    )  # fmt: skip
    from zsconf.render import plan_json

    assert http.get("/api/plan").json() == json.loads(plan_json(view.plan))

    record_statuses(
        view.store, {"tenant/acme": ResourceStatus("tenant/acme", "OutOfSync", "Missing", "would create", 0)}
    )
    view.leader = False
    body = http.get("/api/status").json()
    assert body["leader"] is False
    assert [(s["address"], s["sync"], s["health"], s["reason"]) for s in body["statuses"]] == [
        ("tenant/acme", "OutOfSync", "Missing", "would create")
    ]

    # Resources: the state rows with their recorded axes and last run (what `zsconf show` prints).
    from zsconf.state import ModelVersion, ResourceRow

    view.store.put_resource(ResourceRow(address="tenant/acme", kind="tenant", name="acme", status="applied"))
    view.store.put_resource(ResourceRow(address="model/acme/m", kind="model", tenant="acme", name="m"))
    view.store.add_model_version(ModelVersion(tenant="acme", model="m", version=1, path="/x"))
    res = {r["address"]: r for r in http.get("/api/resources").json()["resources"]}
    assert res["tenant/acme"]["axes"]["health"] == "Missing" and res["tenant/acme"]["status"] == "applied"
    assert res["model/acme/m"]["axes"] is None and [
        v["version"] for v in res["model/acme/m"]["versions"]
    ] == [1]
    assert http.get("/api/resources", params={"address": "tenant/nope"}).status_code == 404

    assert http.post("/api/sync").status_code == 202
    assert http.post("/api/sync", params={"reason": "git push hook"}).json() == {"ok": True}
    assert view.syncs == ["requested through the admin API", "git push hook"]


def test_stop_ends_a_waiting_long_poll(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    token = admin_token(tmp_path)
    server = AdminServer(View(tmp_path, store), "127.0.0.1", 0, token).start()
    out: dict[str, Any] = {}

    def poll() -> None:
        try:
            out["r"] = httpx.get(server.url + "/api/events", params={"wait": 30},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=40)  # fmt: skip
        except httpx.HTTPError as exc:
            out["r"] = exc

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    server.stop()
    stopped = time.monotonic() - t0
    th.join(10)
    store.close()
    assert not th.is_alive() and stopped < 15  # the 30 s poll did not hold the shutdown
    resp = out["r"]
    assert isinstance(resp, httpx.Response) and resp.json()["events"] == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/api/health", timeout=2)


def test_discovery_and_connect(served: Any) -> None:
    view, server, _, _ = served
    stack = view.stack_dir
    assert connect(stack) is None  # no daemon.json
    from zsconf.executors.procs import process_start_time

    info = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "admin_url": server.url,
            "leader": True, "started_at": time.time()}  # fmt: skip
    write_discovery(stack, info)
    assert read_discovery(stack) == info
    client = connect(stack)
    assert client is not None
    with client:
        assert client.health()["pid"] == os.getpid()
        assert client.plan() is None
        client.sync("from a test")
        assert view.syncs == ["from a test"]
        with pytest.raises(AdminError, match="HTTP 404"):
            client.log("r-nope")

    # Same pid, another start time (a reused pid): not our daemon.
    write_discovery(stack, {**info, "start_time": 1.0})
    assert connect(stack) is None
    # A dead pid.
    write_discovery(stack, {**info, "pid": 2**22 + 12345})
    assert connect(stack) is None
    # A wrong token: health answers 401, so no client.
    write_discovery(stack, info)
    token_file = stack / ".zsconf" / "admin.token"
    good = token_file.read_text()
    token_file.write_text("wrong\n")
    assert connect(stack) is None
    token_file.write_text(good)
    # A daemon that does not answer (nothing listens on that port).
    write_discovery(stack, {**info, "admin_url": "http://127.0.0.1:9"})
    assert connect(stack) is None

    # remove_discovery with another pid leaves the leader's file; with ours removes it.
    write_discovery(stack, info)
    remove_discovery(stack, pid=os.getpid() + 1)
    assert read_discovery(stack) == info
    remove_discovery(stack, pid=os.getpid())
    assert read_discovery(stack) is None and not list((stack / ".zsconf").glob(".daemon.json*"))
