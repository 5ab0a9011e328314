"""Webhook notifications, delivered off the reconcile path.

Called by the reconcile loop: `deliver_events(store, notifier)` once per pass turns the events
recorded since the last pass into POSTs for the resources that subscribe to them
(`options.notify` of a job, `notify` of a deployment), through `Notifier.send`. Deliveries run on one background thread with a bounded queue; each is retried with exponential
backoff and then dropped with a logged warning, so a slow or dead receiver never blocks
reconciliation.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zsconf.loading.secrets import MASK
from zsconf.names import JOB_KINDS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from zsconf.state import Event, Store

__all__ = ["CURSOR_KEY", "Notification", "Notifier", "deliver_events", "notify_event_name"]

CURSOR_KEY = "notify_cursor"  # meta row: id of the last event looked at
MAX_AGE_S = 3600.0  # older events (a daemon that was down, a first start) are not announced late

# Engine / daemon event names -> the spec's NotifyEvent names (schemas/common.py).
_EVENT_MAP = {
    "created": "created",
    "run_succeeded": "completed",
    "run_failed": "failed",
    "failed": "failed",
    "run_cancelled": "stopped",
    "job_stopped": "stopped",
    "auto_stopped": "stopped",
    "restarted": "restarted",
    "job_resumed": "running",
    "hang": "hang",
}

log = logging.getLogger("zsconf.daemon.notify")


@dataclass(frozen=True)
class Notification:
    url: str
    payload: dict[str, Any]
    attempts: int = field(default=0, compare=False)


class Notifier:
    def __init__(
        self, retries: int = 4, base_delay_s: float = 0.5, timeout_s: float = 5.0, maxsize: int = 1000
    ):
        self.retries = retries
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Notification | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="zsconf-notify", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        """Queue a POST; never blocks (a full queue drops the oldest intent with a warning)."""
        try:
            self._queue.put_nowait(Notification(url, payload))
        except queue.Full:
            log.warning("notification queue full; dropping event %s for %s", payload.get("event"), url)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (bounded by `timeout_s`), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _post(self, item: Notification) -> None:
        body = json.dumps(item.payload, default=str).encode()
        req = urllib.request.Request(
            item.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "zsconf-daemon"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            resp.read()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            for attempt in range(self.retries + 1):
                try:
                    self._post(item)
                    break
                except Exception as exc:  # any delivery failure is retried, then dropped
                    if attempt == self.retries:
                        log.warning("webhook %s failed after %d attempts: %s", item.url, attempt + 1, exc)
                    else:
                        time.sleep(self.base_delay_s * 2**attempt)


def notify_event_name(ev: Event, kind: str) -> str | None:
    """The NotifyEvent an engine event announces for a resource of `kind` (None: none)."""
    if ev.event == "submitted":
        return "queued" if "queued" in ev.message else "running"
    if ev.event == "status":
        health = (ev.data or {}).get("health")
        return {"Healthy": "healthy", "Degraded": "degraded"}.get(str(health))
    if ev.event in ("updated in-place", "replaced"):
        # a deployment changed under traffic is upgraded; a replaced job is a new job
        return "upgraded" if kind == "deployment" else ("created" if ev.event == "replaced" else None)
    return _EVENT_MAP.get(ev.event)


def _subscription(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    notify = (spec.get("options") or {}).get("notify") if kind in JOB_KINDS else spec.get("notify")
    return notify if isinstance(notify, dict) else {}


def _cursor(store: Store) -> int:
    from zsconf.state import Meta

    with store.session() as s:
        row = s.get(Meta, CURSOR_KEY)
        return int(row.value) if row else 0


def _set_cursor(store: Store, value: int) -> None:
    from zsconf.state import Meta

    with store.session() as s:
        row = s.get(Meta, CURSOR_KEY)
        if row is None:
            s.add(Meta(key=CURSOR_KEY, value=str(value)))
        else:
            row.value = str(value)
            s.add(row)
        s.commit()


def deliver_events(
    store: Store, notifier: Notifier, now: float | None = None, specs: Mapping[str, Any] | None = None
) -> int:
    """Queue a webhook POST for every event recorded since the last call that its resource
    subscribes to; returns how many were queued. The cursor (meta `notify_cursor`) advances past
    every event looked at, matched or not, so each event is considered once. The payload is
    {"event", "address", "message", "ts", "event_id"}: never the event's data or the spec.

    `specs` (address -> spec with secrets resolved: `Engine.desired_specs()`) gives the webhook
    URLs; the state's copy has secrets masked, so without it a URL holding one is not called."""
    now = time.time() if now is None else now
    cursor = _cursor(store)
    resources = store.resources()
    sent = 0
    while True:
        batch = store.events(since_id=cursor, limit=500)
        if not batch:
            break
        for ev in batch:
            cursor = max(cursor, int(ev.id or 0))
            row = resources.get(ev.address or "")
            if row is None or now - ev.ts > MAX_AGE_S:
                continue
            spec = specs.get(row.address) if specs and row.address in specs else row.spec
            sub = _subscription(spec or {}, row.kind)
            name = notify_event_name(ev, row.kind)
            if not sub.get("webhook") or name is None or name not in (sub.get("events") or []):
                continue
            if MASK in sub["webhook"]:
                log.warning(
                    "not calling the webhook of %s: its URL holds a secret that is not loaded", row.address
                )
                continue
            notifier.send(sub["webhook"], {"event": name, "address": ev.address, "message": ev.message,
                                           "ts": ev.ts, "event_id": ev.id})  # fmt: skip
            sent += 1
        _set_cursor(store, cursor)
    return sent
