"""State store tests, run against SQLite and a real PostgreSQL server.

Also defines the `state_url` fixture the other engine tests import (`from test_state import
state_url`). PostgreSQL: `bash .ci/postgres.sh` starts one; the variants run when ZSCONF_TEST_PG_URL names it
(CI: postgresql+psycopg://zs:zs@127.0.0.1:5432/postgres) and are skipped with one reason when it
is unset. Each test gets its own database.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("ZSCONF_TEST_PG_URL", "")


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@functools.cache
def _pg_error() -> str | None:
    """Why the PostgreSQL variants cannot run (asked once per session: one short reason)."""
    if not PG_URL:
        return "ZSCONF_TEST_PG_URL is not set (`bash .ci/postgres.sh` starts a server)"
    try:
        import psycopg

        with psycopg.connect(_pg_conninfo(PG_URL), connect_timeout=3):
            return None
    except Exception as exc:  # no server, no driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PostgreSQL at ZSCONF_TEST_PG_URL unreachable: {type(exc).__name__}: {first}"


# Without ZSCONF_TEST_PG_URL the PostgreSQL variants are not generated at all (conftest.py's header
# says so once), rather than skipped one by one.
@pytest.fixture(params=["sqlite", "postgres"] if PG_URL else ["sqlite"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state database URL: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    err = _pg_error()
    if err is not None:
        pytest.skip(err)
    import psycopg

    name = "zst_" + uuid.uuid4().hex[:12]
    with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = PG_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_resources_runs_versions_events_roundtrip(state_url: str) -> None:
    from zsconf.state import ModelVersion, ResourceRow, RunRow, open_store

    store = open_store(state_url)
    assert store.serial() == 0
    store.put_resource(ResourceRow(address="dataset/a/x", kind="dataset", tenant="a", name="x",
                                   spec={"path": "x.jsonl", "nested": {"k": [1, 2]}}, content_hash="h1"))  # fmt: skip
    assert store.serial() == 1
    row = store.resource("dataset/a/x")
    assert row is not None and row.spec["nested"]["k"] == [1, 2] and row.generation == 1
    store.update_resource("dataset/a/x", status="applied", outputs={"sha256": "abc"})
    assert store.resource("dataset/a/x").outputs == {"sha256": "abc"}  # type: ignore[union-attr]
    assert store.serial() == 2

    store.add_run(RunRow(address="finetune/a/f", run_id="r-1", workdir="/w", pid=123, start_time=5.0))
    store.update_run("r-1", status="running", checkpoints=["ck-1"])
    assert store.run("r-1").checkpoints == ["ck-1"]  # type: ignore[union-attr]
    assert store.last_run("finetune/a/f").run_id == "r-1"  # type: ignore[union-attr]

    store.add_model_version(ModelVersion(tenant="a", model="m", version=1, path="/m/v1"))
    again = store.add_model_version(ModelVersion(tenant="a", model="m", version=1, path="/other"))
    assert again.path == "/m/v1"  # idempotent: a version is registered once
    assert [v.version for v in store.model_versions("a", "m")] == [1]

    e1 = store.add_event("applied", "x applied", "dataset/a/x", n=1)
    store.add_event("drift", "y", None)
    assert [e.event for e in store.events()] == ["applied", "drift"]
    assert [e.event for e in store.events(since_id=e1.id or 0)] == ["drift"]
    assert store.remove_resource("dataset/a/x") and store.resource("dataset/a/x") is None
    store.close()


def test_api_keys_and_usage(state_url: str) -> None:
    import hashlib
    import time

    from zsconf.state import ApiKey, UsageRecord, open_store

    store = open_store(state_url)
    secret = "zs-" + "a" * 40
    h = hashlib.sha256(secret.encode()).hexdigest()
    store.add_api_key(ApiKey(id="ak-0123456789ab", tenant="t", group="g", key_hash=h, prefix=secret[:10]))
    found = store.api_key_by_hash(h)
    assert found is not None and found.id == "ak-0123456789ab" and found.revoked_at is None
    store.add_usage([UsageRecord(ts=time.time(), tenant="t", group="g", key_id=found.id, model="m",
                                 deployment="d", prompt_tokens=3, completion_tokens=4, latency_ms=1.5,
                                 status=200, stream=True)])  # fmt: skip
    assert store.revoke_api_keys("t", "g") == 1
    assert store.api_key_by_hash(h).revoked_at is not None  # type: ignore[union-attr]
    store.close()


def test_newer_schema_is_refused(state_url: str) -> None:
    from sqlmodel import Session

    from zsconf.errors import StateError
    from zsconf.state import open_store
    from zsconf.state.models import Meta

    store = open_store(state_url)
    with Session(store.engine) as s:
        s.merge(Meta(key="schema_version", value="999"))
        s.commit()
    store.close()
    with pytest.raises(StateError, match="schema version 999, newer than this zsconf"):
        open_store(state_url)


def test_default_is_sqlite_wal_in_stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsconf.state import open_store

    monkeypatch.delenv("ZSCONF_STATE_URL", raising=False)
    store = open_store(None, tmp_path)
    assert (tmp_path / ".zsconf" / "state.db").exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_bad_url_is_a_state_error() -> None:
    from zsconf.errors import StateError
    from zsconf.state import open_store

    with pytest.raises(StateError, match="cannot open state database"):
        open_store("nosuchdialect://x")


def test_a_version_1_database_is_migrated_in_place(state_url: str) -> None:
    """A state made before schema 2 (no lock.start_time, no resources.secrets_digest) opens,
    gains the columns, keeps its rows, and works with the lock and resources at once."""
    from sqlalchemy import inspect, text

    from zsconf.state import SCHEMA_VERSION, Meta, ResourceRow, open_store

    store = open_store(state_url)
    store.put_resource(ResourceRow(address="tenant/a", kind="tenant", name="a", spec={"x": 1}))
    with store.engine.begin() as conn:  # make it a version 1 database
        conn.execute(text('ALTER TABLE "lock" DROP COLUMN start_time'))
        conn.execute(text('ALTER TABLE "resources" DROP COLUMN secrets_digest'))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    store.close()

    store = open_store(state_url)
    cols = {t: {c["name"] for c in inspect(store.engine).get_columns(t)} for t in ("lock", "resources")}
    assert "start_time" in cols["lock"] and "secrets_digest" in cols["resources"]
    with store.session() as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)  # type: ignore[union-attr]
    row = store.resource("tenant/a")
    assert row is not None and row.spec == {"x": 1} and row.secrets_digest == ""
    store.release_lock(store.acquire_lock("apply"))
    assert open_store(state_url).serial() == store.serial()  # a second open migrates nothing


def _usage(ts: float, **kw: Any) -> Any:
    from zsconf.state import UsageRecord

    base = {"tenant": "acme", "group": "g1", "key_id": "ak-1", "model": "chat", "deployment": "chat",
            "prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 10.0}  # fmt: skip
    return UsageRecord(ts=ts, **{**base, **kw})


def test_usage_rollup_matches_the_records(state_url: str) -> None:
    """The console's day and week views read the hourly rollup: the same counts as the records,
    and percentiles within the histogram's resolution (a bin is √2 wide)."""
    import math
    import time

    from daemon.console.data import usage
    from zsconf.state import open_store
    from zsconf.usage import percentile

    store = open_store(state_url)
    # Half past midnight: the calls of three hours ago are in yesterday, so the keys' table adds
    # the hours before the first whole day (hourly rollup) to the whole days (daily rollup).
    now = (time.time() // 86400) * 86400 + 1800
    lat = [float(x) for x in range(5, 405, 2)]  # 200 calls, 5 ... 403 ms
    store.add_usage(
        [_usage(now - 3 * 3600, latency_ms=ms, group="g1" if i % 4 else "g2") for i, ms in enumerate(lat)]
    )
    # A second batch into the same hour adds to the rows the first made.
    store.add_usage([_usage(now - 3 * 3600 + 60, latency_ms=ms) for ms in lat[:50]])
    store.add_usage([_usage(now - 60, status=429, error_code="700004", latency_ms=1.0) for _ in range(3)])
    store.add_usage([_usage(now - 30, status=502, latency_ms=2.0)])
    store.add_usage([_usage(now - 8 * 86400)])  # outside the week

    u = usage(store, "24h", now=now)
    assert not u["exact"] and len(u["series"]["t"]) == 24
    assert u["totals"] == {"calls": 254, "failed": 4, "tokens_in": 2540, "tokens_out": 1270, "images": 0}
    hour = u["series"]["calls"].index(250)
    exact = sorted(lat + lat[:50])
    for q in (50, 99):
        got, want = u["series"][f"p{q}"][hour], percentile(exact, q)
        assert abs(math.log2(got / want)) <= 0.5, (q, got, want)
    assert {(c["code"], c["n"]) for c in u["codes"]} == {("700004", 3), ("502", 1)}
    assert [(g["k"], g["calls"]) for g in u["by_group"]] == [("acme/g1", 204), ("acme/g2", 50)]
    assert [(k["k"], k["calls"], k["failed"]) for k in u["by_key"]] == [("ak-1", 254, 4)]
    week = usage(store, "7d", now=now)
    assert week["totals"]["calls"] == 254 and [(k["k"], k["calls"]) for k in week["by_key"]] == [
        ("ak-1", 254)
    ]
    assert usage(store, "24h", group="acme/g2", now=now)["totals"]["calls"] == 50
    # The hour view reads the records themselves: exact.
    one = usage(store, "1h", now=now)
    assert one["exact"] and one["totals"]["calls"] == 4 and one["totals"]["failed"] == 4
    store.close()


def test_upgrade_builds_the_usage_rollup_once(state_url: str) -> None:
    """A store from before the rollup (schema 2) gets it built from its records when opened."""
    import time

    from sqlalchemy import insert, text

    from daemon.console.data import usage
    from zsconf.state import SCHEMA_VERSION, UsageRecord, open_store

    store = open_store(state_url)
    now = time.time()
    rows = [_usage(now - i * 600).model_dump(exclude={"id"}) for i in range(100)]  # over 16 hours
    with store.engine.begin() as conn:  # as an older zsconf wrote them: records only
        conn.execute(insert(UsageRecord.__table__), rows)  # type: ignore[attr-defined]
        conn.execute(text("DELETE FROM usage_hours"))
        conn.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
    store.close()

    again = open_store(state_url)
    assert usage(again, "24h", now=now)["totals"]["calls"] == 100
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == str(
            SCHEMA_VERSION
        )
    again.close()
    assert usage(open_store(state_url), "24h", now=now)["totals"]["calls"] == 100  # not built twice


def test_a_version_3_database_gains_image_usage(state_url: str) -> None:
    """Schema 4 adds images, steps and size to usage records and images to the rollups: a store
    from before gets the columns with 0 images on its rows (so the rollups' sums keep adding:
    NULL would swallow them), and image calls are counted by the records, the rollups, `zsconf
    usage` and the console alike."""
    import time

    from sqlalchemy import text
    from sqlmodel import select

    from daemon.console.data import usage
    from zsconf.state import UsageRecord, open_store
    from zsconf.usage import summarize

    store = open_store(state_url)
    now = (time.time() // 3600) * 3600 + 600  # the three calls share an hour of the rollup
    store.add_usage([_usage(now - 120)])
    with store.engine.begin() as conn:  # as zsconf with schema 3 left it
        for table, cols in (("usage_records", ("images", "steps", "size")), ("usage_hours", ("images",)),
                            ("usage_key_hours", ("images",)), ("usage_key_days", ("images",))):  # fmt: skip
            for col in cols:
                conn.execute(text(f'ALTER TABLE "{table}" DROP COLUMN "{col}"'))
        conn.execute(text("UPDATE meta SET value = '3' WHERE key = 'schema_version'"))
    store.close()

    store = open_store(state_url)
    image = {"prompt_tokens": 0, "completion_tokens": 0}
    store.add_usage([_usage(now - 60, images=2, steps=4, size="512x512", **image),
                     _usage(now - 30, images=1, steps=8, size="360x640", **image)])  # fmt: skip
    with store.session() as s:
        records = list(s.exec(select(UsageRecord)).all())
    assert sorted(r.images for r in records) == [0, 1, 2]
    block = summarize(records)["total"]
    assert block["images"] == 3 and block["image_sizes"] == {"360x640": 1, "512x512": 2}
    assert block["image_steps"] == 2 * 4 + 8
    assert usage(store, "1h", now=now)["totals"]["images"] == 3  # read from the records
    day = usage(store, "24h", now=now)  # read from the rollups
    assert day["totals"] == {"calls": 3, "failed": 0, "tokens_in": 10, "tokens_out": 5, "images": 3}
    assert [(k["k"], k["img"]) for k in day["by_key"]] == [("ak-1", 3)]
    store.close()
