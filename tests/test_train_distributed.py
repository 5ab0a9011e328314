"""A real 2-process torchrun on CPU (gloo, DDP): rank 0 writes the files, data sharded by rank."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from train_helpers import REPO, env, metrics, result, spec, write_alpaca

from runners.train.launch import build_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    argv = build_command(str(path), cards=2, master_addr="127.0.0.1", master_port=_free_port())
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
        assert sorted(p.name for p in Path(ckpt).glob("rng_state_*.pt")) == ["rng_state_0.pt", "rng_state_1.pt"]
