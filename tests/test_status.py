"""Status axes (daemon/status.py): sync and health rules per kind, and recording transitions.

A real store (SQLite; PostgreSQL too when one is reachable) with hand-made rows (resources, runs, model versions, events) and hand-made
plans (zsconf.plans types): the rules are pure logic over them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import test_state

from daemon.status import ResourceStatus, compute_statuses, read_statuses, record_statuses
from zsconf.engine.refresh import Observed
from zsconf.plans import Action, Change, FieldDiff, Plan
from zsconf.state import Event, ModelVersion, ResourceRow, RunRow, Store, open_store

state_url = test_state.state_url  # fixture: SQLite, and PostgreSQL when one is reachable


@pytest.fixture
def store(state_url: str) -> Any:
    s = open_store(state_url)
    yield s
    s.close()


def put(store: Store, address: str, status: str = "applied", spec: dict[str, Any] | None = None) -> None:
    parts = address.split("/")  # tenant/acme has no tenant part
    kind, tenant, name = parts if len(parts) == 3 else (parts[0], None, parts[1])
    store.put_resource(
        ResourceRow(address=address, kind=kind, tenant=tenant, name=name, spec=spec or {},
                    content_hash="h1", status=status)
    )  # fmt: skip


def run(store: Store, address: str, run_id: str, status: str, workdir: Path | None = None, **kw: Any) -> None:
    store.add_run(RunRow(address=address, run_id=run_id, status=status, content_hash="h1",
                         workdir=str(workdir or ""), **kw))  # fmt: skip


def route(store: Store, address: str, run_ids: list[str]) -> None:
    """Record what the gateway routes `address` to, as apply does."""
    store.update_resource(address, outputs={"instances": [{"run_id": r} for r in run_ids]})


def plan_of(*changes: tuple[str, Action], **kw: Any) -> Plan:
    return Plan(
        changes=[Change(address=a, kind=a.split("/")[0], action=act, **kw) for a, act in changes],
        state_serial=0, state_lineage="", stack_hash="", stack_dir="/x",
    )  # fmt: skip


def test_sync_axis(store: Store) -> None:
    for a in ("tenant/acme", "dataset/acme/faq", "dataset/acme/old", "service_group/acme/app"):
        put(store, a)
    plan = plan_of(
        ("tenant/acme", Action.NOOP),
        ("dataset/acme/faq", Action.UPDATE),
        ("service_group/acme/app", Action.NOOP),
        ("deployment/acme/chat", Action.CREATE),
        ("dataset/acme/old", Action.DELETE),
    )
    plan.changes[1].fields.append(FieldDiff("path", "a.jsonl", "b.jsonl"))
    st = compute_statuses(plan, store, Observed(), {"dataset/acme/old"}, {})
    assert (st["tenant/acme"].sync, st["tenant/acme"].health, st["tenant/acme"].reason) == (
        "Synced", "Healthy", "",
    )  # fmt: skip
    assert st["dataset/acme/faq"].sync == "OutOfSync"
    assert st["dataset/acme/faq"].reason == "would update in place: path"
    assert (st["deployment/acme/chat"].sync, st["deployment/acme/chat"].health) == ("OutOfSync", "Missing")
    assert st["deployment/acme/chat"].reason.startswith("would create; not created yet")
    assert st["dataset/acme/old"].sync == "OutOfSync" and "orphan" in st["dataset/acme/old"].reason
    assert st["dataset/acme/old"].health == "Healthy"

    # No plan: every known address is Unknown, with the loading error as the reason.
    st = compute_statuses(None, store, None, set(), {}, plan_error="stack.yaml:3 models.x: bad")
    assert {s.sync for s in st.values()} == {"Unknown"}
    assert "stack.yaml:3 models.x: bad" in st["tenant/acme"].reason
    assert st["tenant/acme"].health == "Healthy"  # health does not need the files
    # A multi-line error (one line per diagnostic) stays one line in the reason.
    st = compute_statuses(
        None, store, None, set(), {}, plan_error="stack.yaml:3 a: bad\nstack.yaml:9 b: bad\n"
    )
    assert st["tenant/acme"].reason == (
        "the stack does not load: stack.yaml:3 a: bad (+1 more: zsconf validate)"
    )


def test_job_health(store: Store, tmp_path: Path) -> None:
    jobs = {
        "finetune/acme/queued": "queued",
        "finetune/acme/running": "running",
        "finetune/acme/ok": "succeeded",
        "finetune/acme/bad": "failed",
        "finetune/acme/stopped": "cancelled",
    }
    for addr, status in jobs.items():
        put(store, addr, status="running" if status in ("queued", "running") else status)
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "loss": 2.0 / i}) + "\n" for i in range(1, 13))
    )
    run(store, "finetune/acme/queued", "r-q", "queued")
    store.add_event(
        "submitted", "run r-q submitted (queued behind finetune/acme/running)", "finetune/acme/queued"
    )
    run(store, "finetune/acme/running", "r-old", "failed", error="old attempt")
    run(store, "finetune/acme/running", "r-run", "running", wd)
    run(store, "finetune/acme/ok", "r-ok", "succeeded")
    store.put_resource(
        ResourceRow(
            address="evaluation/acme/gated",
            kind="evaluation",
            tenant="acme",
            name="gated",
            content_hash="h1",
            status="succeeded",
            outputs={"result": {"gate": {"passed": False, "failures": ["rouge_l 0.2 < 0.5"]}}},
        )
    )
    run(store, "evaluation/acme/gated", "r-g", "succeeded")
    run(store, "finetune/acme/bad", "r-bad", "failed", error="dataset row 3: missing output")
    run(store, "finetune/acme/stopped", "r-st", "cancelled", error="stopped by user")
    plan = plan_of(*((a, Action.NOOP) for a in [*jobs, "evaluation/acme/gated"]))
    st = compute_statuses(plan, store, Observed(), set(), {})
    assert (st["evaluation/acme/gated"].health, st["evaluation/acme/gated"].reason) == (
        "Degraded",
        "run r-g succeeded; quality gate failed: rouge_l 0.2 < 0.5",
    )
    assert (st["finetune/acme/queued"].health, st["finetune/acme/queued"].reason) == (
        "Progressing", "run r-q queued behind finetune/acme/running",
    )  # fmt: skip
    assert st["finetune/acme/running"].health == "Progressing"
    assert st["finetune/acme/running"].reason == "run r-run running: step 12, loss 0.1667"
    assert (st["finetune/acme/ok"].health, st["finetune/acme/ok"].reason) == ("Healthy", "run r-ok succeeded")
    assert st["finetune/acme/bad"].health == "Degraded"
    assert st["finetune/acme/bad"].reason == "run r-bad failed: dataset row 3: missing output"
    assert st["finetune/acme/stopped"].health == "Suspended"
    assert "stopped by user" in st["finetune/acme/stopped"].reason


def test_deployment_health(store: Store) -> None:
    put(store, "deployment/acme/ok", "running", {"instances": 2})
    put(store, "deployment/acme/dead", "running", {"instances": 2})
    put(store, "deployment/acme/new", "running", {"instances": 1})
    put(store, "deployment/acme/half", "running", {"instances": 2})
    put(store, "deployment/acme/off", "stopped", {"instances": 1, "state": "stopped"})
    put(store, "deployment/acme/scaling", "running", {"instances": 1})
    for a, n in (("ok", 2), ("dead", 2), ("half", 1), ("scaling", 1)):
        for i in range(n):
            run(store, f"deployment/acme/{a}", f"r-{a}{i}", "running")
        route(store, f"deployment/acme/{a}", [f"r-{a}{i}" for i in range(n)])
    run(store, "deployment/acme/new", "r-new0", "intent")
    run(store, "deployment/acme/half", "r-half1", "intent")
    obs = Observed(broken={"deployment/acme/dead": "1 of 2 instances not running (r-dead1)"})
    addrs = [f"deployment/acme/{a}" for a in ("ok", "dead", "new", "half", "off")]
    # The files say 2 where the state says 1, and the daemon is applying it: "1 of 2".
    scale = Change(address="deployment/acme/scaling", kind="deployment", action=Action.UPDATE,
                   after={"instances": 2})  # fmt: skip
    plan = plan_of(*((a, Action.NOOP) for a in addrs))
    plan.changes.append(scale)
    st = compute_statuses(plan, store, obs, set(), {}, applying=frozenset({scale.address}))
    h = {a.rsplit("/", 1)[1]: (s.health, s.reason) for a, s in st.items()}
    assert h["ok"] == ("Healthy", "2 of 2 instances running")
    assert h["dead"] == ("Degraded", "1 of 2 instances not running (r-dead1)")
    assert h["new"] == ("Progressing", "no instance running yet (0 of 1), 1 starting")
    assert h["half"] == ("Progressing", "1 of 2 instances running, 1 starting")
    assert h["off"] == ("Suspended", "state: stopped")
    assert h["scaling"] == ("Progressing", "would update in place; applying: 1 of 2 instances running")
    assert st["deployment/acme/scaling"].sync == "OutOfSync"
    # A running instance the gateway does not route to is not counted as serving.
    run(store, "deployment/acme/ok", "r-ok2", "running")
    st = compute_statuses(plan_of(("deployment/acme/ok", Action.NOOP)), store, Observed(), set(), {})
    assert (st["deployment/acme/ok"].health, st["deployment/acme/ok"].reason) == (
        "Progressing", "2 of 2 instances running, 1 starting"
    )  # fmt: skip


def test_model_and_plain_kinds_and_failures(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "v2"
    folder.mkdir(parents=True)
    put(store, "model/acme/here")
    put(store, "model/acme/gone")
    put(store, "model/acme/none")
    put(store, "dataset/acme/faq")
    put(store, "service_group/acme/app")
    put(store, "tenant/acme")
    store.add_model_version(ModelVersion(tenant="acme", model="here", version=1, path=str(tmp_path / "nope")))
    store.add_model_version(ModelVersion(tenant="acme", model="here", version=2, path=str(folder)))
    store.add_model_version(ModelVersion(tenant="acme", model="gone", version=1, path=str(tmp_path / "nope")))
    addrs = ["model/acme/here", "model/acme/gone", "model/acme/none", "dataset/acme/faq",
             "service_group/acme/app", "tenant/acme", "dataset/acme/new"]  # fmt: skip
    plan = plan_of(*((a, Action.NOOP) for a in addrs[:-1]), ("dataset/acme/new", Action.CREATE))
    st = compute_statuses(plan, store, Observed(), set(), {"service_group/acme/app": "quota exceeded"})
    assert (st["model/acme/here"].health, st["model/acme/here"].reason) == ("Healthy", f"v2 at {folder}")
    assert (
        st["model/acme/gone"].health == "Missing"
        and "folder of v1 is missing" in st["model/acme/gone"].reason
    )
    assert st["model/acme/none"].health == "Missing"
    assert st["dataset/acme/faq"].health == "Healthy" and st["tenant/acme"].health == "Healthy"
    assert st["dataset/acme/new"].health == "Missing"
    sg = st["service_group/acme/app"]
    assert (sg.sync, sg.health, sg.reason) == ("Synced", "Degraded", "last apply failed: quota exceeded")


def _status_events(store: Store) -> list[Event]:
    return [e for e in store.events() if e.event == "status"]


def test_record_transitions_and_since(store: Store) -> None:
    put(store, "dataset/acme/a")
    put(store, "dataset/acme/b")
    first = {
        "dataset/acme/a": ResourceStatus("dataset/acme/a", "Synced", "Healthy", "", 0.0),
        "dataset/acme/b": ResourceStatus("dataset/acme/b", "OutOfSync", "Missing", "would create", 0.0),
    }
    tr = record_statuses(store, first)
    assert {t.address for t in tr} == set(first) and all(t.before is None for t in tr)
    assert len(_status_events(store)) == 2
    since = read_statuses(store)["dataset/acme/a"].since
    assert since > time.time() - 5

    # Nothing changed: no transition, no event, since kept; a reason-only change is quiet too.
    time.sleep(0.01)
    same = dict(first)
    same["dataset/acme/b"] = ResourceStatus("dataset/acme/b", "OutOfSync", "Missing", "would create: x", 0.0)
    assert record_statuses(store, same) == []
    assert len(_status_events(store)) == 2
    now = read_statuses(store)
    assert now["dataset/acme/a"].since == since and now["dataset/acme/b"].reason == "would create: x"

    # compute_statuses carries `since` over from the recorded row when both axes are unchanged.
    plan = plan_of(("dataset/acme/a", Action.NOOP), ("dataset/acme/b", Action.NOOP))
    computed = compute_statuses(plan, store, Observed(), set(), {})
    assert computed["dataset/acme/a"].since == since
    assert computed["dataset/acme/b"].since > since  # OutOfSync/Missing -> Synced/Healthy

    tr = record_statuses(store, computed)
    assert [t.address for t in tr] == ["dataset/acme/b"]
    assert tr[0].before is not None and tr[0].before.health == "Missing"
    ev = _status_events(store)[-1]
    assert ev.address == "dataset/acme/b"
    assert ev.data == {"sync": "Synced", "health": "Healthy", "reason": "",
                       "from": {"sync": "OutOfSync", "health": "Missing"}}  # fmt: skip
    assert ev.message == "OutOfSync/Missing -> Synced/Healthy"
    assert read_statuses(store)["dataset/acme/b"].since > since

    # A resource gone from files and state: its row goes (prune), no event.
    record_statuses(store, {"dataset/acme/a": computed["dataset/acme/a"]})
    assert set(read_statuses(store)) == {"dataset/acme/a"}
    assert len(_status_events(store)) == 3


def test_record_does_not_bump_serial(store: Store) -> None:
    put(store, "tenant/acme")
    serial = store.serial()
    record_statuses(store, {"tenant/acme": ResourceStatus("tenant/acme", "Synced", "Healthy", "", 0.0)})
    assert store.serial() == serial
