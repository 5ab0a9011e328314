"""bench/train.py: tokens/s of runners.train vs a plain transformers training loop.

Same debug model, data, batch, steps and optimizer (AdamW with the recipe's learning rate and weight
decay, full fine-tune; fp32 on CPU, bf16 autocast over fp32 weights on an accelerator, as the
runner does). Both sides do the same work inside their timers: the runner is
timed around `TrainRecipe.train()` (setup excluded; its per-step log lines go to /dev/null, really
written, and its metrics.jsonl is really appended); the plain loop is timed around its loop, which
collates each batch from the tokenized examples as any training loop does (the runner collates inside
its loop too). Checkpoints are off on both sides (I/O, not throughput).

The machine may be shared, so the bench runs several rounds, alternating which side goes first, and
prints the median of the per-round ratios, by wall clock (the figure) and by process CPU time (less
sensitive to other processes taking the cores), with the load average. Goal: ratio >= 0.95.

    python bench/train.py [--arch qwen2] [--steps 60] [--batch 4] [--seq 128] [--rounds 7]
                          [--device cpu|cuda] [--hidden 128] [--layers 2]

On a GPU the debug size (hidden 128, 2 layers) measures per-step overhead (kernel launches, host
syncs); `--hidden 1024 --layers 8` gives the GPU real work to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _recipe(model_dir: Path, data: Path, tmp: Path, steps: int, batch: int, seq: int, device: str) -> Any:
    from runners.train.recipe import TrainRecipe
    from schemas.run_train import TrainRunSpec

    run = TrainRunSpec.model_validate(
        {
            "run_id": "bench",
            "address": "finetune/bench/x",
            "workdir": str(tmp / "work"),
            "output_dir": str(tmp / "out"),
            "device": device,
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
    return recipe


def _tokens(recipe: Any, steps: int, batch: int) -> int:
    from runners.train.data import batch_positions

    return sum(
        len(recipe.examples[i].input_ids)
        for s in range(steps)
        for i in batch_positions(s, len(recipe.examples), recipe.hp.seed, batch)
    )


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.cuda.synchronize()  # on an NPU, transfer_to_npu maps this onto the card


def _runner(recipe: Any, steps: int, batch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of recipe.train()."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        _sync(recipe.torch_device)
        w0, c0 = time.perf_counter(), time.process_time()
        recipe.train()
        _sync(recipe.torch_device)
        return time.perf_counter() - w0, time.process_time() - c0


def _plain(model_dir: Path, recipe: Any, steps: int, batch: int) -> tuple[float, float]:
    """The textbook loop: same examples in the same order, padded batches, AdamW."""
    from transformers import AutoModelForCausalLM

    from runners.train.data import batch_positions, collate

    torch.manual_seed(0)
    device = recipe.torch_device
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.hp.learning_rate, weight_decay=recipe.hp.weight_decay
    )
    examples, pad, seed = recipe.examples, recipe.tokenizer.pad_token_id, recipe.hp.seed
    bf16 = recipe.autocast
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    for s in range(steps):
        b = collate([examples[i] for i in batch_positions(s, len(examples), seed, batch)], pad)
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    ap.add_argument("--hidden", type=int, default=128, help="hidden size (a multiple of 128)")
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    from runners.debug_models import build_debug_model

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_dir = tmp / "model"
        build_debug_model(
            {
                "architecture": args.arch,
                "debug": {
                    "hidden_size": args.hidden,
                    "intermediate_size": 2 * args.hidden,
                    "num_hidden_layers": args.layers,
                    "num_attention_heads": args.hidden // 32,
                    "num_key_value_heads": args.hidden // 64,
                    "max_position_embeddings": 2048,
                    "vocab_size": 2048,
                    "seed": 0,
                },
            },
            model_dir,
        )
        data = tmp / "d.jsonl"
        _data(data)

        def recipe(k: int) -> Any:
            return _recipe(model_dir, data, tmp / f"r{k}", args.steps, args.batch, args.seq, args.device)

        # Warm-up (untimed): the first training in a process pays one-time costs (lazy imports,
        # allocator growth) that would otherwise land on whichever side runs first.
        warm = recipe(-1)
        _runner(warm, args.steps, args.batch)
        _plain(model_dir, warm, 5, args.batch)
        tokens = _tokens(warm, args.steps, args.batch)
        rows = []
        for k in range(args.rounds):
            r = recipe(k)
            if k % 2 == 0:  # alternate the order so neither side always runs on a warmer process
                ours, plain = _runner(r, args.steps, args.batch), _plain(model_dir, r, args.steps, args.batch)
            else:
                plain, ours = _plain(model_dir, r, args.steps, args.batch), _runner(r, args.steps, args.batch)
            rows.append((ours, plain))
            print(
                f"round {k}: runners.train {tokens / ours[0]:8.1f} tokens/s, plain {tokens / plain[0]:8.1f}"
                f" tokens/s, ratio {plain[0] / ours[0]:.3f} (CPU time ratio {plain[1] / ours[1]:.3f})",
                flush=True,
            )
            del r
        ours_tps = statistics.median(tokens / o[0] for o, _ in rows)
        plain_tps = statistics.median(tokens / p[0] for _, p in rows)
        ratio = statistics.median(p[0] / o[0] for o, p in rows)
        cpu_ratio = statistics.median(p[1] / o[1] for o, p in rows)
        print(
            f"debug {args.arch} (hidden {args.hidden}, {args.layers} layers) full fine-tune on "
            f"{warm.torch_device}{' bf16' if warm.autocast else ''}, batch {args.batch}, seq<= {args.seq}, "
            f"{args.steps} steps, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f} "
            f"on {os.cpu_count()} cores"
        )
        print(f"runners.train     : {ours_tps:9.1f} tokens/s (median)")
        print(f"plain transformers: {plain_tps:9.1f} tokens/s (median)")
        print(f"ratio             : {ratio:9.3f}  (median of rounds; goal >= 0.95)")
        print(f"CPU-time ratio    : {cpu_ratio:9.3f}  (median of rounds)")


if __name__ == "__main__":
    main()
