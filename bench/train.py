"""bench/train.py: tokens/s of runners.train vs a plain transformers training loop.

Same debug model, data, batch, steps, optimizer (AdamW, full fine-tune, fp32 on CPU). The runner is
timed in-process through its recipe (setup excluded; its own per-step timing excluded too: we time
the whole train() call). Prints both figures and their ratio (goal >= 0.95).

    python bench/train.py [--arch qwen2] [--steps 30] [--batch 4] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

QUESTIONS = [f"Question number {i}: what is {i} plus {i}?" for i in range(64)]


def _data(path: Path) -> None:
    with open(path, "w") as fh:
        for i, q in enumerate(QUESTIONS):
            fh.write(
                json.dumps({"instruction": q, "input": "", "output": f"The answer is {2 * i}. " * 3}) + "\n"
            )


def _runner(model_dir: Path, data: Path, tmp: Path, steps: int, batch: int, seq: int) -> tuple[float, list]:
    from runners.train.recipe import TrainRecipe
    from schemas.run_train import TrainRunSpec

    run = TrainRunSpec.model_validate(
        {
            "run_id": "bench",
            "address": "finetune/bench/x",
            "workdir": str(tmp / "work"),
            "output_dir": str(tmp / "out"),
            "device": "cpu",
            "spec": {
                "description": "bench",
                "model": "base",
                "method": "full",
                "datasets": {"train": "d"},
                "hyperparameters": {
                    "iterations": steps,
                    "global_batch_size": batch,
                    "micro_batch_size": batch,
                    "sequence_length": seq,
                    "learning_rate": 1e-4,
                    "lr_scheduler": "constant",
                    "checkpoints": 1,
                },
                "output": {"model": "m", "description": "b"},
            },
            "inputs": {
                "model_dir": str(model_dir),
                "datasets": {"train": {"path": str(data), "format": "alpaca"}},
            },
        }
    )
    recipe = TrainRecipe(run)
    recipe.setup()
    recipe.ckpt_at = []  # checkpoints are I/O, not training throughput
    import builtins

    quiet_print = builtins.print
    builtins.print = lambda *a, **k: None  # log lines are not what we measure
    try:
        t0 = time.perf_counter()
        recipe.train()
        dt = time.perf_counter() - t0
    finally:
        builtins.print = quiet_print
    from runners.train.data import batch_positions

    tokens = sum(
        len(recipe.examples[i].input_ids)
        for s in range(steps)
        for i in batch_positions(s, len(recipe.examples), recipe.hp.seed, batch)
    )
    return tokens / dt, recipe


def _plain(model_dir: Path, recipe, steps: int, batch: int) -> float:
    """The textbook loop: same examples in the same order, padded batches, AdamW."""
    from transformers import AutoModelForCausalLM

    from runners.train.data import batch_positions, collate

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [
        collate(
            [recipe.examples[i] for i in batch_positions(s, len(recipe.examples), recipe.hp.seed, batch)],
            recipe.tokenizer.pad_token_id,
        )
        for s in range(steps)
    ]
    t0 = time.perf_counter()
    tokens = 0
    for b in batches:
        tokens += int(b["attention_mask"].sum())
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    from runners.debug_models import build_debug_model

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_dir = tmp / "model"
        build_debug_model(
            {
                "architecture": args.arch,
                "debug": {
                    "hidden_size": 128,
                    "intermediate_size": 256,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "max_position_embeddings": 2048,
                    "vocab_size": 2048,
                    "seed": 0,
                },
            },
            model_dir,
        )
        data = tmp / "d.jsonl"
        _data(data)
        rows = []
        for _ in range(2):  # alternate to spread machine noise over both
            ours, recipe = _runner(model_dir, data, tmp / f"r{len(rows)}", args.steps, args.batch, args.seq)
            plain = _plain(model_dir, recipe, args.steps, args.batch)
            rows.append((ours, plain))
        ours = max(r[0] for r in rows)
        plain = max(r[1] for r in rows)
        print(
            f"debug/tiny-{args.arch} full fine-tune, CPU, batch {args.batch}, seq<= {args.seq}, {args.steps} steps"
        )
        print(f"runners.train     : {ours:9.1f} tokens/s")
        print(f"plain transformers: {plain:9.1f} tokens/s")
        print(f"ratio             : {ours / plain:9.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
