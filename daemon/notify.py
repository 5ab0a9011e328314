"""Webhook notifications, delivered off the reconcile path.

Called by the reconcile loop (`Notifier.send`) whenever it records an event a resource subscribes
to. Deliveries run on one background thread with a bounded queue; each is retried with exponential
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
from typing import Any

__all__ = ["Notification", "Notifier"]

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
