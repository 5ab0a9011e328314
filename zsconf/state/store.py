"""The state store: one database (SQLite by default, PostgreSQL via ZSCONF_STATE_URL) and the lock.

Called by the engine (plan/apply), the CLI's state commands, the daemon and the gateway runner
(api keys, usage). Everything goes through `Store` methods so that the serial is bumped on every
write the plan depends on and the lock rules live in one place.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, create_engine, delete, select

from zsconf.errors import StateError, StateLockedError
from zsconf.names import ACTIVE_RUN
from zsconf.state import rollup
from zsconf.state.models import (
    ApiKey,
    Event,
    LockRow,
    Meta,
    ModelVersion,
    ResourceRow,
    RunRow,
    UsageRecord,
    utcnow,
)

__all__ = ["SCHEMA_VERSION", "LockInfo", "ResourceView", "Store", "default_url", "open_store"]

SCHEMA_VERSION = 4
STATE_URL_ENV = "ZSCONF_STATE_URL"

log = logging.getLogger("zsconf.state")


def default_url(stack_dir: str | Path | None) -> str:
    """`ZSCONF_STATE_URL` if set, else SQLite at `<stack_dir>/.zsconf/state.db`."""
    env = os.environ.get(STATE_URL_ENV)
    if env:
        return env
    return f"sqlite:///{Path(stack_dir or '.').resolve() / '.zsconf' / 'state.db'}"


class ResourceView:
    """A read-only resource row (what `Store.resources()` returns); same fields as ResourceRow."""

    __slots__ = (
        "address",
        "content_hash",
        "created_at",
        "dependencies",
        "generation",
        "kind",
        "name",
        "outputs",
        "secrets_digest",
        "spec",
        "status",
        "tenant",
        "updated_at",
    )  # fmt: skip

    def __init__(self, **fields: Any) -> None:
        for k in self.__slots__:
            object.__setattr__(self, k, fields.get(k))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ResourceView is read-only; write with Store.put_resource/update_resource")

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        if mode == "json":
            out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}
        return out


@dataclass(frozen=True)
class LockInfo:
    """Who holds the lock; `stale` when the holder was on this host and its process is gone."""

    lock_id: str
    operation: str
    who: str
    host: str
    pid: int
    created: datetime
    stale: bool

    def describe(self) -> str:
        text = (
            f"lock {self.lock_id} held by {self.who}@{self.host} pid {self.pid} "
            f"for {self.operation!r} since {self.created:%Y-%m-%d %H:%M:%S} UTC"
        )
        if self.stale:
            text += f" (stale: process {self.pid} is gone)"
        return text


class Store:
    """A handle on one state database. Thread-safe (one SQLAlchemy engine, short sessions)."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.held_lock: str | None = None
        self._rows_cache: tuple[int, dict[str, ResourceView]] | None = None
        self._secrets_key: str | None = None

    # -- setup -------------------------------------------------------------------------------
    def init_schema(self) -> None:
        SQLModel.metadata.create_all(self.engine)
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                s.add(Meta(key="serial", value="0"))
                s.add(Meta(key="lineage", value=uuid.uuid4().hex))
                try:
                    s.commit()
                except IntegrityError:  # another process initialised it first
                    s.rollback()
            elif int(row.value) > SCHEMA_VERSION:
                raise StateError(
                    f"state database {self.display_url} has schema version {row.value}, newer than "
                    f"this zsconf understands ({SCHEMA_VERSION}); upgrade zsconf"
                )
            elif int(row.value) < SCHEMA_VERSION:
                self._migrate(int(row.value))

    def _migrate(self, version: int) -> None:
        """Bring an older database up to SCHEMA_VERSION: add what the tables lack (v2:
        `lock.start_time`, `resources.secrets_digest`; v3: the usage rollup tables of
        `zsconf.state.rollup`, made by create_all; v4: images, steps and size of usage records,
        images in the rollups) and fill what needs filling; two processes migrating at once both
        succeed. A column with a default gets it on the rows it is added to (a rollup's sums add to
        it: NULL would swallow them)."""
        from sqlalchemy import inspect, text

        have = inspect(self.engine)
        for table in SQLModel.metadata.sorted_tables:
            present = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                ddl = col.type.compile(dialect=self.engine.dialect)
                default = col.default.arg if col.default is not None and col.default.is_scalar else None
                if col.server_default is not None:
                    arg = str(col.server_default.arg)
                    default = int(arg) if arg.isdigit() else arg
                clause = ""
                if isinstance(default, str):
                    clause = f" DEFAULT '{default}'"
                elif isinstance(default, int | float) and not isinstance(default, bool):
                    clause = f" DEFAULT {default}"
                try:
                    with self.engine.begin() as conn:
                        conn.execute(
                            text(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {ddl}{clause}')
                        )
                except DBAPIError:  # added by a concurrent migration, or a real failure:
                    now = {c["name"] for c in inspect(self.engine).get_columns(table.name)}
                    if col.name not in now:
                        raise
        # The version moves with a compare-and-set, so of two processes migrating at once exactly
        # one backfills (v3: the hourly usage rollup, from the records written before it existed).
        with self.engine.begin() as conn:
            moved = conn.execute(
                text("UPDATE meta SET value = :new WHERE key = 'schema_version' AND value = :old"),
                {"new": str(SCHEMA_VERSION), "old": str(version)},
            ).rowcount
            if moved == 1 and version < 3:
                n = rollup.backfill(conn)
                log.info("state schema %d -> %d: %d usage records added to the hourly rollup", version,
                         SCHEMA_VERSION, n)  # fmt: skip

    @property
    def ephemeral(self) -> bool:
        """An empty state held in memory (`open_store(create=False)` on a stack never applied):
        nothing was ever applied from it, so nothing runs to observe or finish."""
        return self.url == "sqlite://"

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        try:
            return self.engine.url.render_as_string(hide_password=True)
        except Exception:  # pragma: no cover - defensive
            return "<state>"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # -- meta / serial -----------------------------------------------------------------------
    def serial(self) -> int:
        with self.session() as s:
            row = s.get(Meta, "serial")
            return int(row.value) if row else 0

    def lineage(self) -> str:
        with self.session() as s:
            row = s.get(Meta, "lineage")
            return row.value if row else ""

    def secrets_key(self) -> str:
        """This store's random key for `zsconf.engine.hashing.secrets_digest`, made on first use."""
        if self._secrets_key is None:
            with self.session() as s:
                row = s.get(Meta, "secrets_key")
                if row is None:
                    s.add(Meta(key="secrets_key", value=secrets.token_hex(32)))
                    try:
                        s.commit()
                    except IntegrityError:  # made by another process meanwhile
                        s.rollback()
                    row = s.get(Meta, "secrets_key")
                assert row is not None
                self._secrets_key = row.value
        return self._secrets_key

    def _bump(self, s: Session) -> None:
        row = s.get(Meta, "serial")
        if row is None:
            s.add(Meta(key="serial", value="1"))
        else:
            row.value = str(int(row.value) + 1)
            s.add(row)

    # -- resources ---------------------------------------------------------------------------
    def resources(self) -> dict[str, ResourceView]:
        """Every resource, read-only, keyed by address (plan and refresh read the whole table).

        Read with a Core select into plain objects (10,000 rows through the ORM took ~10x
        longer) and cached by the serial, which every resource write bumps: a re-plan of an
        unchanged state costs one small query."""
        serial = self.serial()
        if self._rows_cache is not None and self._rows_cache[0] == serial:
            return dict(self._rows_cache[1])
        table = ResourceRow.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            result = conn.execute(table.select())
            names = list(result.keys())
            rows = {r[0]: ResourceView(**dict(zip(names, r, strict=True))) for r in result.all()}
        self._rows_cache = (serial, rows)
        return dict(rows)

    def resource(self, address: str) -> ResourceRow | None:
        with self.session() as s:
            return s.get(ResourceRow, address)

    def put_resource(self, row: ResourceRow) -> ResourceRow:
        """Insert or replace the row for `row.address`; bumps the serial."""
        with self.session() as s:
            existing = s.get(ResourceRow, row.address)
            row.updated_at = utcnow()
            if existing is not None:
                for field in (
                    "kind", "tenant", "name", "spec", "content_hash", "secrets_digest", "status",
                    "outputs", "dependencies", "generation", "updated_at",
                ):  # fmt: skip
                    setattr(existing, field, getattr(row, field))
                s.add(existing)
                row = existing
            else:
                s.add(row)
            self._bump(s)
            s.commit()
            s.refresh(row)
            return row

    def update_resource(self, address: str, **fields: Any) -> ResourceRow | None:
        with self.session() as s:
            row = s.get(ResourceRow, address)
            if row is None:
                return None
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = utcnow()
            s.add(row)
            self._bump(s)
            s.commit()
            s.refresh(row)
            return row

    def remove_resource(self, address: str) -> bool:
        """Forget a resource (state rm, or after destroy). Runs and events stay for history."""
        with self.session() as s:
            row = s.get(ResourceRow, address)
            if row is None:
                return False
            s.delete(row)
            self._bump(s)
            s.commit()
            return True

    # -- runs --------------------------------------------------------------------------------
    def add_run(self, run: RunRow) -> RunRow:
        with self.session() as s:
            s.add(run)
            s.commit()
            s.refresh(run)
            return run

    def update_run(self, run_id: str, **fields: Any) -> RunRow | None:
        with self.session() as s:
            row = s.exec(select(RunRow).where(RunRow.run_id == run_id)).first()
            if row is None:
                return None
            for k, v in fields.items():
                setattr(row, k, v)
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def run(self, run_id: str) -> RunRow | None:
        with self.session() as s:
            return s.exec(select(RunRow).where(RunRow.run_id == run_id)).first()

    def runs(self, address: str | None = None) -> list[RunRow]:
        with self.session() as s:
            q = select(RunRow)
            if address is not None:
                q = q.where(RunRow.address == address)
            return list(s.exec(q.order_by(RunRow.id)).all())

    def active_runs(self) -> list[RunRow]:
        """Runs not yet finished (intent, submitted, queued, running)."""
        with self.session() as s:
            q = select(RunRow).where(RunRow.status.in_(sorted(ACTIVE_RUN)))  # type: ignore[attr-defined]
            return list(s.exec(q.order_by(RunRow.id)).all())

    def last_run(self, address: str) -> RunRow | None:
        with self.session() as s:
            q = select(RunRow).where(RunRow.address == address).order_by(RunRow.id.desc())  # type: ignore[union-attr]
            return s.exec(q).first()

    # -- model versions ----------------------------------------------------------------------
    def model_versions(self, tenant: str | None = None, model: str | None = None) -> list[ModelVersion]:
        with self.session() as s:
            q = select(ModelVersion)
            if tenant is not None:
                q = q.where(ModelVersion.tenant == tenant)
            if model is not None:
                q = q.where(ModelVersion.model == model)
            return list(s.exec(q.order_by(ModelVersion.model, ModelVersion.version)).all())

    def add_model_version(self, mv: ModelVersion) -> ModelVersion:
        """Register a version; an existing (tenant, model, version) row is returned unchanged."""
        with self.session() as s:
            existing = s.exec(
                select(ModelVersion).where(
                    ModelVersion.tenant == mv.tenant,
                    ModelVersion.model == mv.model,
                    ModelVersion.version == mv.version,
                )
            ).first()
            if existing is not None:
                return existing
            s.add(mv)
            self._bump(s)
            s.commit()
            s.refresh(mv)
            return mv

    def remove_model_versions(self, tenant: str, model: str) -> int:
        with self.session() as s:
            res = s.exec(  # type: ignore[call-overload]
                delete(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.model == model)
            )
            self._bump(s)
            s.commit()
            return int(res.rowcount or 0)

    # -- api keys / usage (gateway) ----------------------------------------------------------
    def add_api_key(self, key: ApiKey) -> ApiKey:
        with self.session() as s:
            s.add(key)
            s.commit()
            s.refresh(key)
            return key

    def api_keys(self, tenant: str | None = None, group: str | None = None) -> list[ApiKey]:
        with self.session() as s:
            q = select(ApiKey)
            if tenant is not None:
                q = q.where(ApiKey.tenant == tenant)
            if group is not None:
                q = q.where(ApiKey.group == group)
            return list(s.exec(q).all())

    def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self.session() as s:
            return s.exec(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()

    def revoke_api_keys(self, tenant: str, group: str) -> int:
        with self.session() as s:
            rows = s.exec(
                select(ApiKey).where(
                    ApiKey.tenant == tenant,
                    ApiKey.group == group,
                    ApiKey.revoked_at.is_(None),  # type: ignore[union-attr]
                )
            ).all()
            for r in rows:
                r.revoked_at = utcnow()
                s.add(r)
            s.commit()
            return len(rows)

    def add_usage(self, records: list[UsageRecord]) -> None:
        self.add_usage_rows([r.model_dump(exclude={"id"}) for r in records])

    def add_usage_rows(self, rows: list[dict[str, Any]]) -> None:
        """Usage records (dicts of USAGE_COLUMNS) and their rollups, in one transaction: one Core
        INSERT (ORM objects cost ~10x more CPU per record)."""
        with self.engine.begin() as conn:
            conn.execute(insert(UsageRecord.__table__), rows)  # type: ignore[attr-defined]
            rollup.add_usage_rows(conn, rows)

    # -- events ------------------------------------------------------------------------------
    def add_event(self, event: str, message: str = "", address: str | None = None, **data: Any) -> Event:
        with self.session() as s:
            ev = Event(ts=time.time(), address=address, event=event, message=message, data=data)
            s.add(ev)
            s.commit()
            s.refresh(ev)
            return ev

    def events(self, since_id: int = 0, address: str | None = None, limit: int = 1000) -> list[Event]:
        """Events with id > since_id (the daemon polls with the last id it saw)."""
        with self.session() as s:
            q = select(Event).where(Event.id > since_id)  # type: ignore[operator]
            if address is not None:
                q = q.where(Event.address == address)
            return list(s.exec(q.order_by(Event.id).limit(limit)).all())

    # -- lock --------------------------------------------------------------------------------
    def lock_info(self) -> LockInfo | None:
        with self.session() as s:
            row = s.get(LockRow, "state")
            if row is None:
                return None
            return LockInfo(row.lock_id, row.operation, row.who, row.host, row.pid, row.created, _dead(row))

    def acquire_lock(self, operation: str, timeout: float = 0.0) -> str:
        """Take the lock or raise StateLockedError naming the holder (after `timeout` seconds).

        A lock whose holder is provably dead (this host, and its pid gone or now another process:
        the start time differs) is taken over at once, with a `lock_taken_over` event and a
        warning on the `zsconf.state` logger. A holder on another host, or alive, is waited for."""
        deadline = time.monotonic() + timeout
        lock_id = str(uuid.uuid4())
        from zsconf.executors.procs import process_start_time  # lazy: the gateway imports the store

        me = os.getpid()
        while True:
            try:
                with self.session() as s:
                    s.add(LockRow(lock_id=lock_id, operation=operation, who=_user(), host=socket.gethostname(),
                                  pid=me, start_time=process_start_time(me)))  # fmt: skip
                    s.commit()
                self.held_lock = lock_id
                return lock_id
            except (IntegrityError, OperationalError):
                pass
            info = self.lock_info()
            if info is None:  # released between our insert and our read: try again
                continue
            if info.stale:
                self._take_over(info)
                continue
            if time.monotonic() >= deadline:
                raise StateLockedError(
                    f"state is locked: {info.describe()}; if that process is gone (it ran on another "
                    f"host), remove the lock with `zsconf force-unlock {info.lock_id}`"
                )
            time.sleep(0.2)

    def _take_over(self, info: LockInfo) -> None:
        """Delete a dead holder's lock (only that one: a lock taken meanwhile by someone else stays)."""
        with self.session() as s:
            gone = s.exec(delete(LockRow).where(LockRow.lock_id == info.lock_id)).rowcount  # type: ignore[call-overload]
            s.commit()
        if gone:
            msg = f"took over the state lock left by a process that died: {info.describe()}"
            log.warning("%s", msg)
            self.add_event("lock_taken_over", msg, None, lock_id=info.lock_id, pid=info.pid)

    def release_lock(self, lock_id: str) -> None:
        with self.session() as s:
            s.exec(delete(LockRow).where(LockRow.lock_id == lock_id))  # type: ignore[call-overload]
            s.commit()
        if self.held_lock == lock_id:
            self.held_lock = None

    def force_unlock(self, lock_id: str) -> LockInfo:
        info = self.lock_info()
        if info is None:
            raise StateError("state is not locked")
        if info.lock_id != lock_id:
            raise StateError(f"lock id {lock_id} does not match the current lock: {info.describe()}")
        self.release_lock(lock_id)
        return info

    @contextmanager
    def locked(self, operation: str, timeout: float = 0.0) -> Iterator[str]:
        lock_id = self.acquire_lock(operation, timeout)
        try:
            yield lock_id
        finally:
            self.release_lock(lock_id)


def _dead(row: LockRow) -> bool:
    """The lock's holder is provably gone: it ran on this host and its pid is free or reused.
    A holder on another host can never be proven dead from here."""
    from zsconf.executors.procs import process_start_time

    if row.host != socket.gethostname():
        return False
    now = process_start_time(row.pid)
    return now is None or (row.start_time is not None and now != row.start_time)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def open_store(url: str | None = None, stack_dir: str | Path | None = None, create: bool = True) -> Store:
    """Open (and create or check) the state database. `url` None = ZSCONF_STATE_URL or SQLite.

    `create=False` (read-only commands: plan, status, show, ...) creates no database: where the
    stack's SQLite file does not exist yet it returns an empty in-memory state whose lineage is
    "" (a plan saved from it applies to a state that is still empty: `Engine.check_fresh`)."""
    url = url or default_url(stack_dir)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            return _empty_store()
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # bad URL, missing driver
        raise StateError(f"cannot open state database {url!r}: {exc}") from exc
    if url.startswith("sqlite"):

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    store = Store(engine, url)
    try:
        store.init_schema()
    except StateError:
        raise
    except Exception as exc:
        raise StateError(f"cannot open state database {store.display_url}: {exc}") from exc
    return store


def _empty_store() -> Store:
    """An empty state that lives in memory only (nothing is created on disk)."""
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    store = Store(engine, "sqlite://")
    store.init_schema()
    with store.session() as s:
        row = s.get(Meta, "lineage")
        assert row is not None
        row.value = ""
        s.add(row)
        s.commit()
    return store
