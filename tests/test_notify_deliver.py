"""daemon.notify.deliver_events: engine events become webhook POSTs to a real HTTP receiver on
loopback, only for the events each resource subscribes to, once each (cursor in the meta table),
with no secrets in the payload. The last test drives a job through a crash and an auto-restart
(checkpointing fake runner) and checks the receiver saw exactly the subscribed events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_jobs import ADDR, STACK, job_env, make_engine  # noqa: F401  (fixtures)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            got.append({"path": self.path, **body})
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()
    thread.join(5)


def _deliver(store: Any) -> int:
    from daemon.notify import Notifier, deliver_events

    notifier = Notifier(retries=1, base_delay_s=0.05, timeout_s=2.0)
    try:
        return deliver_events(store, notifier)
    finally:
        notifier.close(timeout_s=5.0)  # flushes what was queued


def test_subscribed_events_only_once_each(tmp_path: Path, receiver: Any) -> None:
    from zsconf.state import Meta, ResourceRow, open_store

    url, got = receiver
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    job_spec = {
        "options": {"notify": {"events": ["failed", "restarted", "stopped"], "webhook": url + "/job"}}
    }
    dep_spec = {"notify": {"events": ["healthy", "degraded", "upgraded"], "webhook": url + "/dep"},
                "api_key": "zs-secret-never-sent"}  # fmt: skip
    store.put_resource(ResourceRow(address=ADDR, kind="finetune", tenant="acme", name="ft", spec=job_spec))
    store.put_resource(ResourceRow(address="deployment/acme/chat", kind="deployment", tenant="acme", name="chat",
                                   spec=dep_spec))  # fmt: skip
    store.put_resource(
        ResourceRow(address="finetune/acme/quiet", kind="finetune", tenant="acme", name="quiet")
    )
    store.add_event("created", "created", ADDR)  # not subscribed
    store.add_event("submitted", "run r-1 submitted (pid 1)", ADDR)  # running: not subscribed
    store.add_event("run_failed", "run r-1 failed", ADDR, secret="zs-secret-never-sent")
    store.add_event("restarted", "restart 1 of 3", ADDR)
    store.add_event("job_stopped", "stopped by user", ADDR)
    store.add_event("run_failed", "run r-9 failed", "finetune/acme/quiet")  # no webhook
    store.add_event("status", "healthy", "deployment/acme/chat", health="Healthy", sync="Synced")
    store.add_event("status", "progressing", "deployment/acme/chat", health="Progressing")
    store.add_event("replaced", "deployment/acme/chat replaced", "deployment/acme/chat")
    store.add_event("run_failed", "gone", "finetune/acme/deleted")  # resource not in state
    assert _deliver(store) == 5
    by_path = {(p["path"], p["event"]) for p in got}
    assert by_path == {("/job", "failed"), ("/job", "restarted"), ("/job", "stopped"),
                       ("/dep", "healthy"), ("/dep", "upgraded")}  # fmt: skip
    assert len(got) == 5
    assert all(set(p) == {"path", "event", "address", "message", "ts", "event_id"} for p in got)
    assert "zs-secret" not in json.dumps(got)
    # the cursor moved past everything, matched or not: nothing is sent twice
    last = store.events()[-1].id
    with store.session() as s:
        assert s.get(Meta, "notify_cursor").value == str(last)
    assert _deliver(store) == 0 and len(got) == 5
    store.add_event("auto_stopped", "ran longer than 1s", ADDR)
    store.add_event("run_succeeded", "done", ADDR)  # completed: not subscribed by this job
    assert _deliver(store) == 1 and got[-1]["event"] == "stopped" and got[-1]["address"] == ADDR
    store.close()


def test_old_events_are_not_announced(tmp_path: Path, receiver: Any) -> None:
    from daemon.notify import Notifier, deliver_events
    from zsconf.state import ResourceRow, open_store

    url, got = receiver
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    spec = {"options": {"notify": {"events": ["completed"], "webhook": url}}}
    store.put_resource(ResourceRow(address=ADDR, kind="finetune", tenant="acme", name="ft", spec=spec))
    store.add_event("run_succeeded", "done", ADDR)
    notifier = Notifier()
    try:
        assert deliver_events(store, notifier, now=time.time() + 7200) == 0
    finally:
        notifier.close()
    assert got == []
    store.close()


def test_job_crash_restart_webhooks(make_engine: Any, job_env: Path, monkeypatch: Any, receiver: Any) -> None:  # noqa: F811
    from test_jobs import _until_settled

    url, got = receiver
    monkeypatch.setenv("CKPT_MODE", "crash_first")
    eng = make_engine(f"{{notify: {{events: [restarted, completed], webhook: '{url}/hook'}}}}")
    assert eng.apply(eng.plan()).ok
    _until_settled(eng)
    assert _deliver(eng.store) == 2
    assert [p["event"] for p in got] == ["restarted", "completed"]
    assert all(p["address"] == ADDR for p in got)
    assert "restart 1 of 3" in got[0]["message"]
