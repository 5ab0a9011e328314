"""The training runner as a real process on the tiny models: LoRA (loss drops, the merged model
answers a training prompt), full fine-tune, continued pre-training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import QA, metrics, result, run_runner, spec, write_alpaca, write_text

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def _greedy(model_dir: Path, question: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    return tok.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_lora_memorises_and_answers(tiny_qwen2: Path, tmp_path: Path) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 4)
    proc = run_runner(
        spec(
            tmp_path,
            tiny_qwen2,
            data,
            iterations=40,
            checkpoints=2,
            learning_rate=5e-3,
            global_batch_size=4,
            micro_batch_size=4,
            lora_rank=16,
            lora_alpha=32,
            lora_targets=ALL_LINEAR,
            validation=data,
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lm loss" in proc.stdout and "elapsed time per iteration (ms)" in proc.stdout
    res = result(tmp_path)
    out = res["outputs"]
    assert out["final_loss"] < out["first_loss"] * 0.3, out
    assert len(out["checkpoints"]) == 2 and out["iterations"] == 40
    assert (Path(out["adapter_dir"]) / "adapter_config.json").is_file()
    model_dir = Path(out["model_dir"])
    assert (model_dir / "generation_config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not any("lora" in k for k in json.dumps(json.loads((model_dir / "config.json").read_text())))
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "learning_rate", "tokens_per_s_per_card", "elapsed_s"} <= rows[0].keys()
    # Validation (here the memorised set itself) at each checkpoint and at the end.
    val = {r["step"]: r["validation_loss"] for r in rows if "validation_loss" in r}
    assert sorted(val) == [20, 40] and val[40] < val[20] and val[40] < out["first_loss"] * 0.3, val
    assert out["validation_loss"] == val[40] and "validation lm loss" in proc.stdout
    events = [json.loads(x)["event"] for x in (tmp_path / "work" / "events.jsonl").read_text().splitlines()]
    assert events[0] == "started" and events[-1] == "completed" and events.count("checkpoint") == 2
    q, a = QA[0]
    assert _greedy(model_dir, q).strip().startswith(a)


@pytest.mark.slow
def test_full_finetune(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 4)
    proc = run_runner(
        spec(
            tmp_path,
            tiny_llama,
            data,
            method="full",
            iterations=30,
            learning_rate=2e-3,
            global_batch_size=4,
            micro_batch_size=2,
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = result(tmp_path)["outputs"]
    assert out["final_loss"] < out["first_loss"] * 0.3 and out["adapter_dir"] is None
    q, a = QA[1]
    assert _greedy(Path(out["model_dir"]), q).strip().startswith(a)


@pytest.mark.slow
def test_continued_pretrain_packs_and_learns(tiny_qwen2: Path, tmp_path: Path) -> None:
    data = write_text(tmp_path / "text.jsonl", 16)
    proc = run_runner(
        spec(
            tmp_path,
            tiny_qwen2,
            data,
            fmt="pretrain",
            method="continued_pretrain",
            epochs=10,
            learning_rate=2e-3,
            global_batch_size=2,
            micro_batch_size=2,
            sequence_length=32,
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = result(tmp_path)["outputs"]
    # 16 short texts packed into 32-token blocks: fewer examples than texts; auto iterations rule.
    assert 1 < out["train_samples"] < 16
    assert out["iterations"] == -(-out["train_samples"] // 2) * 10
    assert out["final_loss"] < out["first_loss"] * 0.7
