"""Evaluation runner end to end on a tiny model: generation through the chat template, per-sample
file, mean metrics, gate verdict; bad datasets refused with the file and sample named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.evaluate.run import split_sample

REPO = Path(__file__).resolve().parent.parent
ALPACA = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
    {"instruction": "翻译成中文", "input": "Knowledge is power.", "output": "知识就是力量。"},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
]


def _run(tmp: Path, model_dir: Path, data: Path, fmt: str, **spec: Any) -> subprocess.CompletedProcess:
    envelope = {
        "run_id": "r-eval",
        "address": "evaluation/acme/bench",
        "workdir": str(tmp / "work"),
        "spec": {
            "description": "t",
            "model": "m",
            "dataset": "d",
            "max_new_tokens": 6,
            "batch_size": 2,
            **spec,
        },
        "inputs": {"model_dir": str(model_dir), "datasets": {"eval": {"path": str(data), "format": fmt}}},
    }
    path = tmp / "spec.json"
    path.write_text(json.dumps(envelope, ensure_ascii=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "runners.evaluate", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def test_split_sample_last_assistant_turn() -> None:
    tools = [{"name": "f"}]
    sample = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        "tools": tools,
    }
    prompt, expected = split_sample(sample)
    assert expected == "4" and [m["content"] for m in prompt["messages"]] == ["hi", "hello", "2+2?"]
    assert prompt["tools"] == tools  # the prompt keeps the tools the template describes
    with pytest.raises(ValueError, match="assistant"):
        split_sample({"messages": [{"role": "user", "content": "x"}]})


@pytest.mark.slow
def test_evaluate_process_end_to_end(tmp_path: Path, tiny_qwen2: Path) -> None:
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ALPACA), encoding="utf-8")
    proc = _run(tmp_path, tiny_qwen2, data, "alpaca", gate={"min_rouge_l": 0.9, "min_bleu_4": 0.0})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    out = result["outputs"]
    assert result["status"] == "succeeded" and out["samples"] == 3
    assert set(out["metrics"]) == {"accuracy", "rouge_1", "rouge_2", "rouge_l", "bleu_4"}
    rows = [json.loads(line) for line in (tmp_path / "work" / "samples.jsonl").read_text().splitlines()]
    assert [r["expected"] for r in rows] == ["Paris", "知识就是力量。", "5"]
    # The prompt went through the model's chat template (ChatML for the debug Qwen2), input appended.
    assert rows[1]["prompt"].startswith("<|im_start|>user\n翻译成中文\nKnowledge is power.<|im_end|>")
    assert rows[1]["prompt"].endswith("<|im_start|>assistant\n")
    # Reported metrics are the means of the per-sample scores.
    for name, value in out["metrics"].items():
        assert value == pytest.approx(sum(r["scores"][name] for r in rows) / 3)
    # A random-weight model cannot reach ROUGE-L 0.9: the gate fails and says why.
    gate = out["gate"]
    assert gate["thresholds"] == {"min_rouge_l": 0.9, "min_bleu_4": 0.0}
    assert gate["passed"] is False and gate["failures"][0].startswith("rouge_l ")
    assert out["generation"]["seed"] is None  # greedy

    # Greedy is deterministic: a second run (batch size 1, a subset of metrics) generates the same text.
    second = tmp_path / "second"
    second.mkdir()
    proc = _run(
        second, tiny_qwen2, data, "alpaca", batch_size=1, metrics=["rouge_1"], gate={"min_rouge_1": 0.0}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in (second / "work" / "samples.jsonl").read_text().splitlines()]
    assert [r["generated"] for r in again] == [r["generated"] for r in rows]
    out2 = json.loads((second / "work" / "result.json").read_text())["outputs"]
    assert list(out2["metrics"]) == ["rouge_1"] and out2["gate"]["passed"] is True


@pytest.mark.slow
def test_evaluate_sharegpt_bad_sample_exits_1(tmp_path: Path, tiny_llama: Path) -> None:
    data = tmp_path / "chat.jsonl"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad = {"conversations": [{"from": "human", "value": "no answer"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    proc = _run(tmp_path, tiny_llama, data, "sharegpt")
    assert proc.returncode == 1
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["status"] == "failed"
    # the platform's ShareGPT rule, from the one dataset reader, naming the line
    rule = "chat.jsonl: line 2: conversations: expected an even number of turns ending with 'gpt'"
    assert rule in result["error"]


@pytest.mark.slow
def test_evaluate_sharegpt_sampling(tmp_path: Path, tiny_llama: Path) -> None:
    data = tmp_path / "chat.jsonl"
    conv = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]}
    data.write_text((json.dumps(conv, ensure_ascii=False) + "\n") * 3, encoding="utf-8")
    proc = _run(tmp_path, tiny_llama, data, "sharegpt", temperature=0.8, max_samples=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "work" / "result.json").read_text())["outputs"]
    assert out["samples"] == 2 and out["generation"]["seed"] == 0
    assert out["gate"] == {"thresholds": {}, "passed": True, "failures": []}
