"""The daemon's leader lease: one reconciling daemon per state store.

Called by `daemon.main` (the standby loop calls `acquire()` every lease_s/3; the leader runs
`start_renewing()` so a long reconcile pass never loses it; `release()` on a clean exit) and by the
reconciler, which asks `held` before every step that acts.

The lease is one row of the `leases` table (`LeaseRow`, name "daemon"), taken and renewed with a
compare-and-set UPDATE: the row changes only when its holder is me, or the lease has expired, or
its holder is a daemon on this host whose process is gone (a restart after SIGKILL need not wait
for the expiry). The first daemon ever INSERTs the row; an IntegrityError there means another one
won the race. Both statements are plain SQL, so the rule holds alike on SQLite and PostgreSQL.
Times are this host's wall clock (epoch seconds): daemons sharing a PostgreSQL store from several
hosts need their clocks in step to well under a lease period (NTP does that).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from zsconf.executors.procs import pid_running
from zsconf.state.models import LeaseRow

if TYPE_CHECKING:
    from zsconf.state import Store

__all__ = ["LEASE_NAME", "Lease", "LeaseInfo"]

LEASE_NAME = "daemon"
log = logging.getLogger("zsconf.daemon.lease")


class LeaseInfo:
    """Who holds the lease, as read from the row (for standby messages and the admin API)."""

    __slots__ = ("expires_at", "holder")

    def __init__(self, holder: str, expires_at: float) -> None:
        self.holder = holder
        self.expires_at = expires_at

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return f"{self.holder} (expires in {left:.1f} s)" if left > 0 else f"{self.holder} (expired)"


def _local_holder_dead(holder: str) -> bool:
    """True when `holder` ("host:pid:token") names a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    # A zombie (killed, not yet reaped by its parent) holds nothing either.
    return pid != os.getpid() and not pid_running(pid)


class Lease:
    """A renewable lease on one store. `held` is True only while the last acquire/renew worked."""

    def __init__(
        self,
        store: Store,
        lease_s: float = 15.0,
        name: str = LEASE_NAME,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.lease_s = float(lease_s)
        self.name = name
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_lost = on_lost
        self.acquired_at: float | None = None  # when this daemon became leader (monotonic)
        self._held = threading.Event()
        self._valid_until = 0.0  # monotonic end of the term the last successful write bought
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table = LeaseRow.__table__  # type: ignore[attr-defined]

    @property
    def held(self) -> bool:
        """Held now: the last acquire/renew worked and its term has not run out on this host's
        monotonic clock (which runs on while the process is stopped: a daemon frozen past its
        lease, then resumed, does not act before its renew thread has found out)."""
        return self._held.is_set() and time.monotonic() < self._valid_until

    # -- reads -------------------------------------------------------------------------------
    def info(self) -> LeaseInfo | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(self._table.c.holder, self._table.c.expires_at).where(self._table.c.name == self.name)
            ).first()
        return LeaseInfo(row[0], float(row[1])) if row is not None else None

    # -- writes ------------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Become (or stay) the leader if the lease is free; True when this daemon holds it."""
        now, mono = time.time(), time.monotonic()
        t = self._table
        try:
            current = self.info()
            cond = (t.c.holder == self.holder) | (t.c.expires_at < now)
            if current is not None and _local_holder_dead(current.holder):
                cond = cond | (t.c.holder == current.holder)  # compare-and-set on what we saw
            with self.store.engine.begin() as conn:
                res = conn.execute(
                    update(t)
                    .where(t.c.name == self.name, cond)
                    .values(
                        holder=self.holder, expires_at=now + self.lease_s, renewed_at=now, acquired_at=now
                    )
                )
                won = res.rowcount == 1
            if not won and current is None:
                try:
                    with self.store.engine.begin() as conn:
                        conn.execute(
                            insert(t).values(
                                name=self.name,
                                holder=self.holder,
                                expires_at=now + self.lease_s,
                                acquired_at=now,
                                renewed_at=now,
                            )
                        )
                    won = True
                except IntegrityError:
                    won = False  # another daemon inserted it first
        except SQLAlchemyError as exc:
            log.warning("lease: cannot reach the state store: %s", exc)
            won = False
        if won and not self.held:
            self.acquired_at = mono
        self._set(won, mono)
        return won

    def renew(self) -> bool:
        """Extend the lease if this daemon still holds it; False (and `held` cleared) otherwise."""
        now, mono = time.time(), time.monotonic()
        t = self._table
        try:
            with self.store.engine.begin() as conn:
                res = conn.execute(
                    update(t)
                    .where(t.c.name == self.name, t.c.holder == self.holder)
                    .values(expires_at=now + self.lease_s, renewed_at=now)
                )
                ok = res.rowcount == 1
        except SQLAlchemyError as exc:
            log.warning("lease: renew failed: %s", exc)
            ok = False
        self._set(ok, mono)
        return ok

    def release(self) -> None:
        """Give the lease up (clean exit): a standby takes over at its next try, not at expiry."""
        self.stop_renewing()
        t = self._table
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    update(t)
                    .where(t.c.name == self.name, t.c.holder == self.holder)
                    .values(expires_at=0.0, renewed_at=time.time())
                )
        except SQLAlchemyError as exc:
            log.warning("lease: release failed (it expires by itself): %s", exc)
        self._held.clear()

    # -- background renewal ------------------------------------------------------------------
    def start_renewing(self) -> None:
        """Renew every lease_s/3 on a thread, so a long pass never loses the lease."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="zsconf-lease", daemon=True)
        self._thread.start()

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if not self.renew():
                return  # lost: the main loop goes back to standby and retries acquire()

    def _set(self, held: bool, since: float = 0.0) -> None:
        was = self._held.is_set()
        if held:
            self._valid_until = since + self.lease_s
            self._held.set()
        else:
            self._held.clear()
            self.acquired_at = None
            if was and self.on_lost is not None:
                self.on_lost()
