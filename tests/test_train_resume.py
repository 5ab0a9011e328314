"""Interrupt a real runner, resume, and end with the weights of a run that was never interrupted:
SIGKILL after a periodic checkpoint, or SIGTERM (`zsconf job stop`), which checkpoints the step it
stopped at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import REPO, env, result, run_runner, spec, write_alpaca


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("method", "how"), [("full", "kill"), ("lora", "kill"), ("lora", "sigterm")])
def test_interrupt_then_resume_matches_uninterrupted(
    tiny_qwen2: Path, tmp_path: Path, method: str, how: str
) -> None:
    import torch

    hp = {
        "method": method,
        "iterations": 12,
        "checkpoints": 3,
        "learning_rate": 2e-3,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.2,
        "lora_dropout": 0.1,
    }
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    data = write_alpaca(tmp_path / "qa.jsonl", 8)
    assert run_runner(spec(a, tiny_qwen2, data, **hp)).returncode == 0

    spec_b = spec(b, tiny_qwen2, data, **hp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.train", str(spec_b)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = b / "work" / "checkpoints"
    try:
        if how == "kill":
            first = ckpts / "step-4"
            deadline = time.monotonic() + 180
            while not first.is_dir() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert first.is_dir(), "no checkpoint before the deadline"
            os.kill(proc.pid, signal.SIGKILL)
        else:
            log = b / "work" / "metrics.jsonl"
            deadline = time.monotonic() + 180
            while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
                time.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 143)
    assert not (b / "work" / "result.json").exists(), "run finished before the interruption"
    if how == "sigterm":
        # the step it stopped at is checkpointed (between the periodic ones at 4, 8 and 12)
        stopped_at = len((b / "work" / "metrics.jsonl").read_text().splitlines())
        assert 1 <= stopped_at < 12 and (ckpts / f"step-{stopped_at}" / "trainer_state.json").is_file()
        assert '"stopped"' in (b / "work" / "events.jsonl").read_text()

    body = json.loads(spec_b.read_text())
    body["resume"] = True
    spec_b.write_text(json.dumps(body))
    resumed = run_runner(spec_b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = (b / "work" / "events.jsonl").read_text()
    assert '"resumed"' in events
    # It really continued: no step before the checkpoint was trained again.
    assert "iteration 1/12 " not in resumed.stdout and "iteration 12/12 " in resumed.stdout
    if how == "sigterm":
        steps = [line for line in resumed.stdout.splitlines() if line.startswith("iteration ")]
        assert steps[0].startswith(f"iteration {stopped_at + 1}/12 ")
    out_a, out_b = result(a)["outputs"], result(b)["outputs"]
    assert out_b["iterations"] == 12
    wa, wb = _weights(Path(out_a["model_dir"])), _weights(Path(out_b["model_dir"]))
    assert wa.keys() == wb.keys()
    base = _weights(tiny_qwen2)
    changed = [k for k in wa if k in base and not torch.equal(wa[k], base[k])]
    assert changed, "training changed nothing: the comparison would prove nothing"
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert abs(out_a["final_loss"] - out_b["final_loss"]) < 1e-5
