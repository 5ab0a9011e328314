"""Job control (zsconf.engine.jobs) with real runner processes: the checkpointing fake runner
(tests/fake_runners/ckpt_job.py) started through the engine, a real SQLite store and the local
executor. auto_restart after an injected crash (exit 137) resumes from the checkpoint; the
unconditional mode gives up after 3 failures in a row; auto_stop stops a long run for good;
stop then resume continues from the latest checkpoint and registers one model version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_plan import REPO, TESTS, make_stack, stop_all

ADDR = "finetune/acme/ft"

STACK = """\
platform: {{device: cpu, default_tenant: acme}}
tenants:
  acme: {{}}
datasets:
  faq: {{path: data/faq.jsonl, format: alpaca}}
models:
  base: {{base: debug/tiny-qwen2, path: base-model, validate_weights: false}}
finetunes:
  ft:
    model: base
    datasets: {{train: faq}}
    hyperparameters: {{epochs: 1, global_batch_size: 2, micro_batch_size: 1, sequence_length: 64}}
    output: {{model: bot}}
    options: {options}
"""


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The engine runs tests/fake_runners/ckpt_job.py; returns its start log ("run_id step")."""
    starts = tmp_path / "starts.log"
    monkeypatch.setenv("ZSCONF_RUNNER_MODULE_FINETUNE", "fake_runners.ckpt_job")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("CKPT_STARTS", str(starts))
    monkeypatch.setenv("CKPT_STEP_S", "0.05")
    monkeypatch.setenv("CKPT_MODE", "ok")
    return starts


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Any]:
    engines: list[Any] = []

    def make(options: str = "{}") -> Any:
        from zsconf.engine import Engine

        eng = Engine(make_stack(tmp_path / "s", STACK.format(options=options)))
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        stop_all(eng)
        eng.close()


def _starts(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines()]


def _pass(eng: Any) -> list[str]:
    """One daemon-like pass: record finished runs, then supervise."""
    from zsconf.engine.jobs import supervise_jobs
    from zsconf.engine.runs import finish_runs

    finish_runs(eng.store, eng.executor)
    return supervise_jobs(eng.store, eng.executor)


def _until_settled(eng: Any, seconds: float = 20.0) -> list[str]:
    """Passes until the job's last run is finished and supervision does nothing more."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines += _pass(eng)
        last = eng.store.last_run(ADDR)
        if last is not None and last.status not in ("intent", "submitted", "queued", "running"):
            more = _pass(eng)
            lines += more
            if not more:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"job did not settle: {[(r.run_id, r.status) for r in eng.store.runs(ADDR)]}")


def _events(eng: Any, name: str) -> list[Any]:
    return [e for e in eng.store.events(address=ADDR) if e.event == name]


def test_auto_restart_after_crash_resumes_from_checkpoint(
    make_engine: Any, job_env: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CKPT_MODE", "crash_first")
    eng = make_engine("{auto_restart: {max_restarts: 2}}")
    assert eng.apply(eng.plan()).ok
    _until_settled(eng)
    runs = eng.store.runs(ADDR)
    assert [r.status for r in runs] == ["failed", "succeeded"]
    assert runs[0].exit_code == 137 and runs[1].attempt == 2
    assert runs[0].workdir == runs[1].workdir  # same folder: the checkpoints are found
    # the second start resumed at the checkpoint the crashed attempt wrote
    assert _starts(job_env) == [(runs[0].run_id, 0), (runs[1].run_id, 2)]
    (ev,) = _events(eng, "restarted")
    assert "exit code 137" in ev.message and "restart 1 of 2" in ev.message and "checkpoint-2" in ev.message
    assert [v.version for v in eng.store.model_versions("acme", "bot")] == [1]
    assert eng.store.resource(ADDR).status == "succeeded"


def test_apply_wait_follows_the_restart_to_its_end(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("CKPT_MODE", "crash_first")
    eng = make_engine("{auto_restart: {max_restarts: 2}}")
    result = eng.apply(eng.plan(), wait=True)
    runs = eng.store.runs(ADDR)
    assert result.ok, result.diagnostics
    assert [r.status for r in runs] == ["failed", "succeeded"]
    (outcome,) = [o for o in result.outcomes if o.address == ADDR]
    assert f"run {runs[1].run_id} succeeded" in outcome.message
    assert [v.version for v in eng.store.model_versions("acme", "bot")] == [1]


def test_user_failure_not_restarted_unless_unconditional(
    make_engine: Any, job_env: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CKPT_MODE", "fail")
    eng = make_engine("{auto_restart: {max_restarts: 10}}")
    assert eng.apply(eng.plan()).ok
    _until_settled(eng)
    assert _events(eng, "restarted") == []  # exit 1 = user/data error: not an environment fault
    assert [r.status for r in eng.store.runs(ADDR)] == ["failed"]


def test_unconditional_stops_after_three_in_a_row(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("CKPT_MODE", "fail")
    eng = make_engine("{auto_restart: {max_restarts: 10, unconditional: true}}")
    assert eng.apply(eng.plan()).ok
    _until_settled(eng, 30)
    runs = eng.store.runs(ADDR)
    assert [r.status for r in runs] == ["failed"] * 4  # first run + 3 restarts in a row
    restarts = _events(eng, "restarted")
    assert len(restarts) == 3 and "restart 3 of 10" in restarts[-1].message
    assert [r.attempt for r in runs] == [1, 2, 3, 4]


def test_auto_stop_stops_a_long_run_for_good(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("CKPT_STEPS", "400")  # 20 s of work
    eng = make_engine("{auto_stop: 1s, auto_restart: {unconditional: true}}")
    assert eng.apply(eng.plan()).ok
    from zsconf.engine.jobs import supervise_jobs

    t0 = time.time()
    while not _events(eng, "auto_stopped") and time.time() - t0 < 15:
        _pass(eng)
        time.sleep(0.2)
    (ev,) = _events(eng, "auto_stopped")
    assert "auto_stop: ran longer than 1s" in ev.message
    (run,) = eng.store.runs(ADDR)
    assert run.status == "cancelled" and eng.store.resource(ADDR).status == "stopped"
    assert len(_events(eng, "auto_stopped")) == 1
    assert _pass(eng) == [] and supervise_jobs(eng.store, eng.executor, now=time.time() + 3600) == []
    assert len(eng.store.runs(ADDR)) == 1  # never restarted
    assert eng.executor.observe(run.run_id).state == "stopped"


def test_auto_stop_bounds_the_job_across_restarts(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    """auto_stop is the job's running time: a restart continues the same budget."""
    monkeypatch.setenv("CKPT_MODE", "crash_first")
    monkeypatch.setenv("CKPT_STEP_S", "1.0")  # the first attempt runs about 2 s, then crashes
    monkeypatch.setenv("CKPT_STEPS", "400")
    eng = make_engine("{auto_stop: 10s, auto_restart: {max_restarts: 2}}")
    assert eng.apply(eng.plan()).ok
    from zsconf.engine.jobs import supervise_jobs

    deadline = time.monotonic() + 30
    while len(eng.store.runs(ADDR)) < 2 and time.monotonic() < deadline:
        _pass(eng)
        time.sleep(0.05)
    first, second = eng.store.runs(ADDR)
    ran = (first.finished_at - first.started_at).total_seconds()
    assert first.status == "failed" and 2.0 <= ran < 5
    # 8.5 s into the second attempt: under 10 s for the attempt, over 10 s for the job
    assert supervise_jobs(eng.store, eng.executor, now=time.time() + 8.5) == [
        f"{ADDR}: auto_stop: ran longer than 10s"
    ]
    assert eng.store.run(second.run_id).status == "cancelled"
    assert eng.store.resource(ADDR).status == "stopped"
    (ev,) = _events(eng, "auto_stopped")
    assert ev.data["run_id"] == second.run_id


def test_no_restart_once_the_job_used_its_auto_stop_time(
    make_engine: Any, job_env: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CKPT_MODE", "crash_first")
    monkeypatch.setenv("CKPT_STEP_S", "0.6")  # crashes after about 1.2 s, over the 1 s budget
    eng = make_engine("{auto_stop: 1s, auto_restart: {max_restarts: 2}}")
    assert eng.apply(eng.plan()).ok
    (run,) = eng.store.runs(ADDR)
    deadline = time.monotonic() + 30
    while eng.executor.observe(run.run_id).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)  # no supervision meanwhile: the crash, not auto_stop, ends the attempt
    lines = _until_settled(eng)
    assert lines == [f"{ADDR}: auto_stop: ran longer than 1s; not restarted"]
    assert [r.status for r in eng.store.runs(ADDR)] == ["failed"]
    assert eng.store.resource(ADDR).status == "stopped" and _events(eng, "restarted") == []


def test_silent_running_attempt_reported_once_as_suspected_hang(
    make_engine: Any, job_env: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CKPT_STEP_S", "30")  # the fake runner sleeps before its first output
    monkeypatch.setenv("ZSCONF_HANG_AFTER", "1s")
    eng = make_engine("{}")
    assert eng.apply(eng.plan()).ok
    (run,) = eng.store.runs(ADDR)
    assert _pass(eng) == []  # just started: not silent yet
    time.sleep(1.5)
    (line,) = _pass(eng)
    assert line.startswith(f"{ADDR}: run {run.run_id}: no progress for 1s") and "suspected hang" in line
    assert _pass(eng) == []  # once per attempt
    (ev,) = _events(eng, "hang")
    assert ev.data["run_id"] == run.run_id
    from daemon.notify import notify_event_name

    assert notify_event_name(ev, "finetune") == "hang"  # what a `notify: {events: [hang]}` subscriber gets
    assert eng.executor.observe(run.run_id).state == "running"  # reported, not stopped


def test_stop_then_resume_continues_from_latest_checkpoint(
    make_engine: Any, job_env: Path, monkeypatch: Any
) -> None:
    from zsconf.engine.jobs import list_checkpoints, resume_job, stop_job
    from zsconf.errors import StateError

    monkeypatch.setenv("CKPT_STEPS", "40")
    monkeypatch.setenv("CKPT_STEP_S", "0.1")
    eng = make_engine()
    assert eng.apply(eng.plan()).ok
    with pytest.raises(StateError, match="already running"):
        resume_job(eng.store, eng.executor, ADDR)
    deadline = time.monotonic() + 10
    while len(list_checkpoints(eng.store, ADDR)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = stop_job(eng.store, eng.executor, ADDR)
    assert stopped.status == "cancelled" and eng.store.resource(ADDR).status == "stopped"
    with pytest.raises(StateError, match="no running attempt"):
        stop_job(eng.store, eng.executor, ADDR)
    assert _pass(eng) == []  # a stopped job is not restarted, and finish_runs leaves it stopped
    assert eng.store.resource(ADDR).status == "stopped"
    cks = list_checkpoints(eng.store, ADDR)
    assert cks and cks[-1].step == max(c.step for c in cks) and cks[-1].size_bytes > 0
    monkeypatch.setenv("CKPT_STEP_S", "0.01")
    new = resume_job(eng.store, eng.executor, ADDR)
    assert new.attempt == 2 and new.checkpoints == [cks[-1].path]
    assert eng.store.resource(ADDR).status == "running"
    _until_settled(eng)
    starts = _starts(job_env)
    assert starts[1] == (new.run_id, cks[-1].step)
    assert [r.status for r in eng.store.runs(ADDR)] == ["cancelled", "succeeded"]
    assert [v.version for v in eng.store.model_versions("acme", "bot")] == [1]
    names = [e.event for e in eng.store.events(address=ADDR)]
    assert names.index("job_stopped") < names.index("job_resumed") < names.index("run_succeeded")
    with pytest.raises(StateError, match="already succeeded"):
        resume_job(eng.store, eng.executor, ADDR)


class _DiesOnSubmit:
    """The real executor, except that the first submit raises: a starter dying between its
    intent row and the submit."""

    def __init__(self, real: Any) -> None:
        self.real, self.died = real, False

    def submit(self, req: Any) -> Any:
        if not self.died:
            self.died = True
            raise RuntimeError("starter died")
        return self.real.submit(req)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_interrupted_resume_is_submitted_later(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    from zsconf.engine.jobs import list_checkpoints, resume_job, stop_job, supervise_jobs

    monkeypatch.setenv("CKPT_STEPS", "40")
    monkeypatch.setenv("CKPT_STEP_S", "0.1")
    eng = make_engine()
    assert eng.apply(eng.plan()).ok
    deadline = time.monotonic() + 10
    while not list_checkpoints(eng.store, ADDR) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_job(eng.store, eng.executor, ADDR)
    monkeypatch.setenv("CKPT_STEP_S", "0.01")
    with pytest.raises(RuntimeError):
        resume_job(eng.store, _DiesOnSubmit(eng.executor), ADDR)
    intent = eng.store.last_run(ADDR)
    assert intent.status == "intent" and len(_events(eng, "job_resumed")) == 1  # announced first
    assert supervise_jobs(eng.store, eng.executor) == []  # too fresh: its starter may still be at work
    (line,) = supervise_jobs(eng.store, eng.executor, now=time.time() + 60)
    assert intent.run_id in line and "interrupted" in line
    _until_settled(eng)
    assert [r.status for r in eng.store.runs(ADDR)] == ["cancelled", "succeeded"]
    assert _starts(job_env)[-1][0] == intent.run_id and _starts(job_env)[-1][1] > 0


def test_resume_finishes_an_interrupted_resume(make_engine: Any, job_env: Path, monkeypatch: Any) -> None:
    from zsconf.engine.jobs import resume_job, stop_job

    monkeypatch.setenv("CKPT_STEPS", "40")
    eng = make_engine()
    assert eng.apply(eng.plan()).ok
    stop_job(eng.store, eng.executor, ADDR)
    monkeypatch.setenv("CKPT_STEP_S", "0.01")
    with pytest.raises(RuntimeError):
        resume_job(eng.store, _DiesOnSubmit(eng.executor), ADDR)
    intent = eng.store.last_run(ADDR)
    run = resume_job(eng.store, eng.executor, ADDR)  # the user tries again: same attempt, submitted
    assert run.run_id == intent.run_id and run.status in ("running", "queued")
    _until_settled(eng)
    assert [r.status for r in eng.store.runs(ADDR)] == ["cancelled", "succeeded"]
