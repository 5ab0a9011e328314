"""`zsconf job stop | resume | checkpoints`: address forms, clear errors, the state lock, the
checkpoint table (fake checkpointing runner), and one real LoRA fine-tune of the debug Qwen2
(runners.train) stopped after its first checkpoint, resumed, finishing with a model version.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_jobs import STACK, job_env  # noqa: F401  (fixture)
from test_plan import REPO, make_stack, stop_all
from typer.testing import CliRunner

ADDR = "finetune/acme/ft"


def invoke(*args: str) -> Any:
    from zsconf.cli.main import app

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    # a ZsconfError reaches main.run(), which prints it as one line: fold it into the output
    r.text = r.output + (f"error: {r.exception}" if r.exception else "")
    return r


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    from zsconf.engine import Engine

    eng = Engine(make_stack(tmp_path / "s", STACK.format(options="{}")))
    yield eng
    stop_all(eng)
    eng.close()


def _wait(check: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_address_forms_and_errors(engine: Any) -> None:
    from zsconf.cli.job_cmds import resolve_job_address
    from zsconf.errors import StateError
    from zsconf.state import ResourceRow

    s = engine.store
    for addr in (ADDR, "finetune/other/ft", "evaluation/acme/ev", "compression/acme/only"):
        tenant = addr.split("/")[1]
        s.put_resource(
            ResourceRow(address=addr, kind=addr.split("/")[0], tenant=tenant, name=addr.split("/")[2])
        )
    d = engine.stack_dir
    assert resolve_job_address(s, ADDR, d) == ADDR
    assert resolve_job_address(s, "finetune/ft", d) == ADDR  # platform.default_tenant: acme
    assert resolve_job_address(s, "only", d) == "compression/acme/only"
    with pytest.raises(StateError, match=r"ambiguous: finetune/acme/ft, finetune/other/ft"):
        resolve_job_address(s, "ft", d)
    with pytest.raises(StateError, match=r"no job 'nope'; jobs: compression/acme/only, evaluation/acme/ev"):
        resolve_job_address(s, "nope", d)
    r = invoke("job", "stop", "nope", "-C", str(d))
    assert r.exit_code == 1 and "no job 'nope'" in r.text


def test_cli_stop_checkpoints_resume(engine: Any, job_env: Path, monkeypatch: Any) -> None:  # noqa: F811
    monkeypatch.setenv("CKPT_STEPS", "40")
    monkeypatch.setenv("CKPT_STEP_S", "0.1")
    assert engine.apply(engine.plan()).ok
    d = str(engine.stack_dir)
    with engine.store.locked("apply"):  # stop takes the state lock like apply
        r = invoke("job", "stop", "ft", "-C", d, "--lock-timeout", "0s")
        assert r.exit_code == 1 and "lock" in r.text.lower()
    _wait(lambda: len(_ckpts(engine)) >= 2)
    r = invoke("job", "stop", "finetune/ft", "-C", d)
    assert r.exit_code == 0, r.output
    assert (
        "stopped" in r.output and f"zsconf job resume -C {d} finetune/acme/ft" in r.output
    )  # pastes as printed
    r = invoke("job", "checkpoints", "ft", "-C", d)
    assert r.exit_code == 0, r.output
    latest = _ckpts(engine)[-1]
    rows = [line for line in r.output.splitlines() if "checkpoint-" in line]
    assert len(rows) == len(_ckpts(engine)) >= 2
    marked = [line for line in rows if "*" in line]
    assert len(marked) == 1 and latest.name in marked[0] and "(latest)" in marked[0]
    monkeypatch.setenv("CKPT_STEP_S", "0.01")
    r = invoke("job", "resume", ADDR, "-C", d)
    assert r.exit_code == 0, r.output
    assert f"from {latest.name}" in r.output and "attempt 2" in r.output
    r = invoke("job", "resume", ADDR, "-C", d)
    assert r.exit_code == 1 and "already running" in r.text
    _wait(lambda: engine.finish_runs() is not None and engine.store.last_run(ADDR).status == "succeeded")


def _ckpts(engine: Any) -> list[Path]:
    from zsconf.engine.jobs import list_checkpoints

    return [Path(c.path) for c in list_checkpoints(engine.store, ADDR)]


REAL_STACK = """\
platform: {device: cpu, default_tenant: demo}
tenants:
  demo: {}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2, path: base-model}
finetunes:
  faq-lora:
    model: base
    method: lora
    datasets: {train: faq}
    hyperparameters: {iterations: 60, checkpoints: 6, global_batch_size: 2, micro_batch_size: 2,
                      sequence_length: 64, learning_rate: 0.002}
    output: {model: faq-bot}
"""


@pytest.mark.slow
def test_real_lora_stop_resume_registers_version(tiny_qwen2: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from zsconf.engine import Engine

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    stack = make_stack(tmp_path / "s", REAL_STACK)
    shutil.rmtree(stack / "base-model")
    shutil.copytree(tiny_qwen2, stack / "base-model")
    addr = "finetune/demo/faq-lora"
    eng = Engine(stack)
    try:
        assert eng.apply(eng.plan()).ok
        run = eng.store.last_run(addr)
        ck = Path(run.workdir) / "checkpoints"
        _wait(lambda: ck.is_dir() and any(ck.iterdir()), 240)
        r = invoke("job", "stop", "faq-lora", "-C", str(stack))
        assert r.exit_code == 0, r.output
        assert not (Path(run.workdir) / "result.json").exists(), "finished before the stop"
        first = _ckpts_of(eng, addr)
        from zsconf.engine.jobs import list_checkpoints

        losses = [c.loss for c in list_checkpoints(eng.store, addr)]
        assert losses and all(isinstance(x, float) and x > 0 for x in losses), losses
        r = invoke("job", "resume", "finetune/faq-lora", "-C", str(stack))
        assert r.exit_code == 0, r.output
        assert f"from {first[-1].name}" in r.output

        def done() -> bool:
            eng.finish_runs()
            return eng.store.last_run(addr).status not in ("running", "queued", "submitted")

        _wait(done, 300)
        runs = eng.store.runs(addr)
        assert [r.status for r in runs] == ["cancelled", "succeeded"], runs[-1].error
        result = json.loads((Path(runs[-1].workdir) / "result.json").read_text())
        assert result["outputs"]["iterations"] == 60
        events = (Path(runs[-1].workdir) / "events.jsonl").read_text()
        assert '"resumed"' in events  # the runner continued from the checkpoint, not from step 0
        (mv,) = eng.store.model_versions("demo", "faq-bot")
        assert mv.version == 1 and Path(mv.path, "config.json").exists()
    finally:
        stop_all(eng)
        eng.close()


def _ckpts_of(eng: Any, addr: str) -> list[Path]:
    from zsconf.engine.jobs import list_checkpoints

    return [Path(c.path) for c in list_checkpoints(eng.store, addr)]
