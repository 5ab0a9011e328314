"""Fast train-runner pieces: iteration rule, checkpoint spacing, sampler, SFT labels, launch argv,
device errors, and the DeepSpeed-missing refusal at construct time (a real runner process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from train_helpers import result, run_runner, spec, write_alpaca

from runners.train.data import IGNORE, batch_positions, tokenize_sft
from runners.train.recipe import checkpoint_steps, total_iterations


def test_iterations_rule() -> None:
    assert total_iterations(100, 32, 3, "auto") == 12  # ceil(100/32)=4 x 3
    assert total_iterations(100, 32, 3, 7) == 7


def test_checkpoint_steps_even_and_last() -> None:
    assert checkpoint_steps(40, 4) == [10, 20, 30, 40]
    assert checkpoint_steps(10, 3) == [3, 7, 10]
    assert checkpoint_steps(2, 5) == [1, 2]


def test_sampler_is_deterministic_and_covers_epochs() -> None:
    a = [batch_positions(s, 10, 7, 5) for s in range(4)]
    assert a == [batch_positions(s, 10, 7, 5) for s in range(4)]
    assert sorted(a[0] + a[1]) == list(range(10))  # epoch 0 is a permutation
    assert sorted(a[2] + a[3]) == list(range(10))
    assert a[0] + a[1] != a[2] + a[3]  # new order per epoch
    assert batch_positions(0, 10, 8, 5) != a[0]


def test_sft_labels_only_assistant_with_end_of_turn(tiny_qwen2: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    msgs = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]
    ex = tokenize_sft(tok, msgs, 64)
    trained = tok.decode([t for t in ex.labels if t != IGNORE])
    assert trained.startswith("Hello!") and tok.eos_token in trained
    assert "Say hello" not in trained
    short = tokenize_sft(tok, msgs, 5)
    assert len(short.input_ids) == 5 and all(t == IGNORE for t in short.labels)


def test_missing_device_is_a_clear_error() -> None:
    import torch

    from kernels import DeviceUnavailableError, select_device

    assert select_device("cpu").dist_backend == "gloo"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="cuda"):
            select_device("cuda")
    if importlib.util.find_spec("torch_npu") is None:
        with pytest.raises(DeviceUnavailableError, match="npu"):
            select_device("npu")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed installed")
def test_deepspeed_missing_fails_at_construct(tiny_qwen2: Path, tmp_path: Path) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 4)
    proc = run_runner(
        spec(tmp_path, tiny_qwen2, data, resources={"deepspeed_stage": 2}, iterations=2), timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    res = result(tmp_path)
    assert res["status"] == "failed" and "[gpu]" in res["error"] and "deepspeed" in res["error"]
    assert "\n" not in res["error"]
