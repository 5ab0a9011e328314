"""A real 2-process torchrun on CPU (gloo, DDP): rank 0 writes the files, data sharded by rank."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_helpers import REPO, env, metrics, result, spec, write_alpaca

from zsconf.registry import REGISTRY, runner_argv


@pytest.mark.slow
def test_two_process_torchrun_cpu(tiny_qwen2: Path, tmp_path: Path) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 8)
    path = spec(
        tmp_path,
        tiny_qwen2,
        data,
        method="full",
        iterations=6,
        checkpoints=2,
        learning_rate=2e-3,
        global_batch_size=4,
        micro_batch_size=1,
    )
    argv = runner_argv(REGISTRY["finetune"], str(path), processes=2)  # as the engine launches it
    proc = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = result(tmp_path)
    assert res["status"] == "succeeded"
    out = res["outputs"]
    assert out["iterations"] == 6 and len(out["checkpoints"]) == 2
    assert out["final_loss"] < out["first_loss"]
    # rank 0 alone wrote the metrics: one line per step, not two.
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert proc.stdout.count("iteration 6/6") == 1
    # each rank's random streams are in every checkpoint (resume restores each rank's own)
    for ckpt in out["checkpoints"]:
        assert sorted(p.name for p in Path(ckpt).glob("rng_state_*.pt")) == [
            "rng_state_0.pt",
            "rng_state_1.pt",
        ]


@pytest.mark.slow
def test_sigterm_to_the_group_stops_every_rank_at_one_step(tiny_qwen2: Path, tmp_path: Path) -> None:
    """`zsconf job stop` signals the whole process group (torchrun and its workers): the ranks agree
    on the step to stop at, write one checkpoint together and exit, instead of deadlocking in a
    collective one of them never reaches."""
    data = write_alpaca(tmp_path / "qa.jsonl", 8)
    path = spec(tmp_path, tiny_qwen2, data, method="full", iterations=200, checkpoints=1,
                global_batch_size=4, micro_batch_size=1)  # fmt: skip
    argv = runner_argv(REGISTRY["finetune"], str(path), processes=2)  # as the engine launches it
    log = tmp_path / "work" / "metrics.jsonl"
    proc = subprocess.Popen(argv, cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, "torchrun ended before the first step"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)  # a rank stuck in a collective would hang here until the timeout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stopped_at = len(log.read_text().splitlines())
    assert 1 <= stopped_at < 200
    ckpt = tmp_path / "work" / "checkpoints" / f"step-{stopped_at}"
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pt")) == ["rng_state_0.pt", "rng_state_1.pt"]
    assert '"stopped"' in (tmp_path / "work" / "events.jsonl").read_text()
    assert not (tmp_path / "work" / "result.json").exists()
