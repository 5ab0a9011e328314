"""Plan tests: create/update/replace/delete classification, lineage, drift, flags, JSON format.

Real SQLite/PostgreSQL state, real stacks on disk, real runner processes (tests/fake_runners).
`make_stack` and `engine_env` are imported by tests/test_apply*.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_state

state_url = test_state.state_url  # fixture: SQLite and PostgreSQL
REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2, path: base-model, validate_weights: false}
finetunes:
  ft:
    model: base
    datasets: {train: faq}
    hyperparameters: {epochs: 2, global_batch_size: 2, micro_batch_size: 1, sequence_length: 64}
    output: {model: bot}
compressions:
  cq:
    model: bot@latest
    strategy: smoothquant-w8a8
    output: {model: bot-q}
evaluations:
  ev: {model: bot@latest, dataset: faq}
deployments:
  chat: {model: bot@latest, engine: embedded, instances: 1}
service_groups:
  app: {services: [chat], keys: 2}
"""


def make_stack(root: Path, text: str = STACK, samples: int = 6) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(samples)]
    (root / "data" / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "base-model").mkdir(exist_ok=True)
    (root / "base-model" / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "stack.yaml").write_text(text)
    return root


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the engine at the fake runners; returns the file where runner starts are logged."""
    starts = tmp_path / "starts.log"
    for kind in ("FINETUNE", "COMPRESSION", "EVALUATION"):
        monkeypatch.setenv(f"ZSCONF_RUNNER_MODULE_{kind}", "fake_runners.job")
    monkeypatch.setenv("ZSCONF_RUNNER_MODULE_DEPLOYMENT", "fake_runners.serve")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("FAKE_STARTS", str(starts))
    monkeypatch.setenv("FAKE_SLEEP", "0.2")
    return starts


def stop_all(engine: Any) -> None:
    """Kill every process the state knows about (no orphans after a test)."""
    from zsconf.engine import launcher

    pids = [
        (run.pid, run.start_time) for run in engine.store.runs() if run.pid and run.start_time is not None
    ]
    pids += [(h.pid, h.start_time) for h in engine.executor.list_instances()]  # the gateway too
    for pid, start_time in pids:
        if launcher.is_alive(launcher.ProcessRef(pid, start_time)):
            os.killpg(pid, signal.SIGKILL)


def actions(plan: Any) -> dict[str, str]:
    return {c.address: c.action.value for c in plan.changes if c.action.value != " "}


def test_first_plan_creates_everything_with_estimates(tmp_path: Path, state_url: str) -> None:
    from zsconf.engine import Engine
    from zsconf.render import plan_json, plan_text

    eng = Engine(make_stack(tmp_path / "s"), state_url)
    plan = eng.plan()
    assert set(actions(plan).values()) == {"+"} and len(actions(plan)) == 8
    assert plan.can_apply()
    text = plan_text(plan)
    assert "Plan: 8 to add, 0 to change, 0 to replace, 0 to destroy." in text
    assert "+ finetune/acme/ft" in text
    ft = next(c for c in plan.changes if c.address == "finetune/acme/ft")
    # 6 samples / global batch 2 = 3 iterations per epoch, 2 epochs
    assert ft.estimate["samples"] == 6 and ft.estimate["iterations"] == 6
    assert "iterations: 6 (6 samples)" in text
    data = json.loads(plan_json(plan))
    assert data["format_version"] == 1
    assert data["summary"] == {"add": 8, "change": 0, "replace": 0, "destroy": 0}
    assert {c["action"] for c in data["changes"]} == {"+"}


def _applied(tmp_path: Path, url: str, text: str = STACK) -> Any:
    from zsconf.engine import Engine

    eng = Engine(make_stack(tmp_path / "s", text), url)
    result = eng.apply(eng.plan(), wait=True)
    assert result.ok, result.diagnostics
    return eng


def test_changes_classified_with_reasons(tmp_path: Path, state_url: str, engine_env: Path) -> None:
    eng = _applied(tmp_path, state_url)
    try:
        assert actions(eng.plan()) == {}
        stack = tmp_path / "s" / "stack.yaml"
        # replace field of a job -> replace, and everything consuming its output follows
        stack.write_text(STACK.replace("epochs: 2", "epochs: 3"))
        plan = eng.plan()
        acts = actions(plan)
        assert acts["finetune/acme/ft"] == "-/+"
        ft = next(c for c in plan.changes if c.address == "finetune/acme/ft")
        assert "hyperparameters.epochs forces replacement" in ft.reasons
        assert [(f.path, f.before, f.after, f.forces_replace) for f in ft.fields] == [
            ("hyperparameters.epochs", 2, 3, True)
        ]
        assert acts["compression/acme/cq"] == "-/+" and acts["evaluation/acme/ev"] == "-/+"
        cq = next(c for c in plan.changes if c.address == "compression/acme/cq")
        assert any("input changed: finetune/acme/ft" in r for r in cq.reasons)
        assert acts["deployment/acme/chat"] == "~"  # a new model version is a rolling update
        from zsconf.render import plan_text

        assert "~ hyperparameters.epochs: 2 -> 3 # forces replacement" in plan_text(plan)
        # in-place field -> update only
        stack.write_text(STACK.replace("instances: 1", "instances: 2"))
        assert actions(eng.plan()) == {"deployment/acme/chat": "~"}
        # a replace field of a deployment
        stack.write_text(STACK.replace("instances: 1", "instances: 1, engine_args: {x: 1}"))
        plan = eng.plan()
        assert actions(plan) == {"deployment/acme/chat": "-/+"}
        # ignore_changes hides the field
        stack.write_text(
            STACK.replace("instances: 1", "instances: 3, lifecycle: {ignore_changes: [instances]}")
        )
        assert actions(eng.plan()) == {"deployment/acme/chat": "~"}  # only lifecycle itself changed
        # removal -> delete
        stack.write_text(
            STACK.replace("  ev: {model: bot@latest, dataset: faq}\n", "  {}\n").replace(
                "evaluations:\n  {}\n", ""
            )
        )
        assert actions(eng.plan()) == {"evaluation/acme/ev": "-"}
    finally:
        stop_all(eng)


def test_dataset_edit_replaces_downstream_jobs(tmp_path: Path, state_url: str, engine_env: Path) -> None:
    eng = _applied(tmp_path, state_url)
    try:
        with open(tmp_path / "s" / "data" / "faq.jsonl", "a") as f:
            f.write(json.dumps({"instruction": "new", "input": "", "output": "x"}) + "\n")
        plan = eng.plan()
        acts = actions(plan)
        assert acts["dataset/acme/faq"] == "~"
        assert acts["finetune/acme/ft"] == "-/+" and acts["evaluation/acme/ev"] == "-/+"
        assert acts["compression/acme/cq"] == "-/+"
        ds = next(c for c in plan.changes if c.address == "dataset/acme/faq")
        ft = next(c for c in plan.changes if c.address == "finetune/acme/ft")
        assert ds.reasons == ["dataset file content changed"]
        assert ft.reasons == ["input changed: dataset/acme/faq"]
        assert "tenant/acme" not in acts
    finally:
        stop_all(eng)


def test_drift_dead_server_and_missing_model_files(tmp_path: Path, state_url: str, engine_env: Path) -> None:
    import shutil

    from zsconf.render import plan_text

    eng = _applied(tmp_path, state_url)
    try:
        inst = eng.store.resource("deployment/acme/chat").outputs["instances"][0]  # type: ignore[union-attr]
        os.killpg(inst["pid"], signal.SIGKILL)
        _wait_dead(inst["pid"])
        bot_q = eng.store.model_versions("acme", "bot-q")[0]
        shutil.rmtree(bot_q.path)
        plan = eng.plan()
        drift = {d.address: d.message for d in plan.drift}
        assert "instances not running" in drift["deployment/acme/chat"]
        text = plan_text(plan)
        assert text.startswith("Changed outside zsconf:")
        assert actions(plan)["deployment/acme/chat"] == "~"
        assert "model folder of acme/bot-q v1 is missing" in drift["compression/acme/cq"]
        assert actions(plan)["compression/acme/cq"] == "-/+"
        # the refresh-only plan shows the drift and changes nothing
        ro = eng.plan(refresh_only=True)
        assert ro.drift and not ro.actionable()
        # applying restarts the server
        assert eng.apply(eng.plan(), wait=True).ok
        after = eng.plan()
        assert after.drift == [] and actions(after) == {}
    finally:
        stop_all(eng)


def _wait_dead(pid: int) -> None:
    import time

    from zsconf.executors.procs import process_start_time

    for _ in range(100):
        if process_start_time(pid) is None:
            return
        time.sleep(0.05)


def test_target_replace_prevent_destroy_and_version_limit(
    tmp_path: Path, state_url: str, engine_env: Path
) -> None:
    from zsconf.engine import Engine
    from zsconf.state import ModelVersion

    eng = Engine(make_stack(tmp_path / "s"), state_url)
    # --target pulls in dependencies only
    plan = eng.plan(targets=["finetune/acme/ft"])
    assert set(actions(plan)) == {"tenant/acme", "dataset/acme/faq", "model/acme/base", "finetune/acme/ft"}
    assert eng.plan(targets=["finetune/acme/nope"]).errors
    # 11th version refused at plan time
    for v in range(1, 11):
        eng.store.add_model_version(ModelVersion(tenant="acme", model="bot", version=v, path=""))
    plan = eng.plan()
    assert not plan.can_apply()
    assert any("model acme/bot has 10 versions" in e and "at most 10" in e for e in plan.errors)
    eng.store.remove_model_versions("acme", "bot")
    try:
        assert eng.apply(eng.plan()).ok
        # --replace forces a replace
        plan = eng.plan(replace=["service_group/acme/app"])
        assert actions(plan) == {"service_group/acme/app": "-/+"}
        # prevent_destroy makes a destroying plan fail
        (tmp_path / "s" / "stack.yaml").write_text(
            STACK.replace("keys: 2}", "keys: 2, lifecycle: {prevent_destroy: true}}")
        )
        assert eng.apply(eng.plan()).ok
        plan = eng.plan(destroy=True)
        assert not plan.can_apply()
        assert any("service_group/acme/app: lifecycle.prevent_destroy" in e for e in plan.errors)
    finally:
        stop_all(eng)


def test_saved_plan_round_trip_and_staleness(tmp_path: Path, state_url: str, engine_env: Path) -> None:
    from zsconf.engine import Engine
    from zsconf.errors import StalePlanError
    from zsconf.plans import Plan
    from zsconf.render import plan_json

    eng = Engine(make_stack(tmp_path / "s"), state_url)
    saved = Plan.from_dict(json.loads(plan_json(eng.plan())))
    assert saved.as_dict() == eng.plan().as_dict()
    try:
        stale = Plan.from_dict(json.loads(plan_json(eng.plan(targets=["tenant/acme"]))))
        assert eng.apply(saved, saved=True).ok
        with pytest.raises(StalePlanError, match="state serial"):
            eng.apply(stale, saved=True)
        fresh = Plan.from_dict(json.loads(plan_json(eng.plan())))
        (tmp_path / "s" / "stack.yaml").write_text(STACK.replace("keys: 2", "keys: 3"))
        with pytest.raises(StalePlanError, match="stack changed"):
            eng.apply(fresh, saved=True)
    finally:
        stop_all(eng)


def zsconf(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zsconf.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def test_cli_detailed_exitcode_json_saved_plan_and_apply(tmp_path: Path, engine_env: Path) -> None:
    stack = make_stack(tmp_path / "s")
    out = zsconf("plan", str(stack), "--detailed-exitcode", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Plan: 8 to add, 0 to change, 0 to replace, 0 to destroy." in out.stdout
    js = zsconf("plan", str(stack), "--json", cwd=tmp_path)
    assert json.loads(js.stdout)["format_version"] == 1
    # not a terminal and no --auto-approve: refused
    refused = zsconf("apply", str(stack), cwd=tmp_path)
    assert refused.returncode == 1 and "--auto-approve" in refused.stderr
    saved = zsconf("plan", str(stack), "-o", str(tmp_path / "p.json"), cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    try:
        applied = zsconf("apply", str(tmp_path / "p.json"), cwd=tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "Apply complete! Resources: 8 added" in applied.stdout
        keys = [line.strip() for line in applied.stdout.splitlines() if line.strip().startswith("zs-")]
        assert len(keys) == 2
        again = zsconf("apply", str(tmp_path / "p.json"), cwd=tmp_path)
        assert again.returncode == 1 and "stale" in again.stderr
        assert zsconf("plan", str(stack), "--detailed-exitcode", cwd=tmp_path).returncode == 0
        listing = zsconf("state", "list", "-C", str(stack), cwd=tmp_path)
        assert "finetune/acme/ft\tsucceeded" in listing.stdout
        shown = zsconf("show", "model/acme/base", "-C", str(stack), "--json", cwd=tmp_path)
        assert json.loads(shown.stdout)["versions"][0]["version"] == 1
        rm = zsconf("state", "rm", "service_group/acme/app", "-C", str(stack), cwd=tmp_path)
        assert rm.returncode == 0
        assert "+ service_group/acme/app" in zsconf("plan", str(stack), cwd=tmp_path).stdout
        gone = zsconf("destroy", str(stack), "--auto-approve", cwd=tmp_path)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert zsconf("state", "list", "-C", str(stack), cwd=tmp_path).stdout == ""
    finally:
        from zsconf.engine import Engine

        stop_all(Engine(stack))


def test_capacity_says_what_a_job_queues_behind(tmp_path: Path) -> None:
    from zsconf.engine import Engine
    from zsconf.render import plan_text

    text = STACK.replace("  acme: {}", "  acme: {quotas: {max_concurrent_jobs: 1}}")
    eng = Engine(make_stack(tmp_path / "s", text), f"sqlite:///{tmp_path / 'state.db'}")
    plan = eng.plan()
    # cq and ev both start after ft (they consume its output), so ft is nobody's blocker; with one
    # job at a time, the later of the two queues behind the other.
    assert plan.capacity == [
        "evaluation/acme/ev will queue: tenant acme allows 1 concurrent jobs; behind compression/acme/cq"
    ]
    assert "Capacity: evaluation/acme/ev will queue" in plan_text(plan)
