"""One evaluation run: batched generation through the chat template, per-sample scores, gate.

Called by `runners/evaluate/__main__.py`. Imports torch / transformers inside functions only.
"""

from __future__ import annotations

import json
import time
from itertools import islice
from pathlib import Path
from typing import Any

from runners.evaluate.metrics import METRICS, score
from runners.runfiles import RunFiles, UserError
from runners.samples import chat_text, samples
from schemas.run_evaluate import EvaluateRunSpec

__all__ = ["SAMPLING_SEED", "check_gate", "evaluate", "split_sample"]

# Seed of sampled generation (temperature > 0), so a re-run reproduces the same answers.
SAMPLING_SEED = 0


def split_sample(sample: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the prompt: the sample up to its last turn, with its tools; the expected answer: the last
    assistant turn)."""
    msgs = sample.get("messages") or []
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError("sample has no final assistant turn to compare with")
    return {**sample, "messages": msgs[:-1]}, msgs[-1]["content"]


def check_gate(metrics: dict[str, float], gate: dict[str, float | None]) -> dict[str, Any]:
    """Gate verdict: every `min_<metric>` threshold set must be met."""
    thresholds = {k: v for k, v in gate.items() if v is not None}
    failures = []
    for key, minimum in thresholds.items():
        name = key.removeprefix("min_")
        if metrics[name] < minimum:
            failures.append(f"{name} {metrics[name]:.4f} < {minimum}")
    return {"thresholds": thresholds, "passed": not failures, "failures": failures}


def evaluate(run: EvaluateRunSpec, files: RunFiles) -> dict[str, Any]:
    """Run the evaluation described by `run`; return result.json `outputs`."""
    started = time.monotonic()
    spec = run.spec
    ds = run.inputs.datasets.get("eval")
    if ds is None:
        raise UserError("inputs.datasets.eval is required (the benchmark dataset)")
    if ds.format == "pretrain":
        raise UserError(f"{ds.path}: evaluation needs question/answer samples, not plain text (pretrain)")
    pairs: list[tuple[dict[str, Any], str]] = []
    for index, sample in enumerate(islice(samples(ds.path, ds.format), spec.max_samples)):
        try:
            pairs.append(split_sample(sample))
        except ValueError as exc:
            raise UserError(f"{ds.path}: sample {index + 1}: {exc}") from exc
    if not pairs:
        raise UserError(f"{ds.path}: no samples to evaluate")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(run.inputs.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder (no config.json)")
    device = "cuda" if run.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    sampling = spec.temperature > 0
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": spec.max_new_tokens,
        "do_sample": sampling,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if sampling:
        gen_kwargs["temperature"] = spec.temperature
        torch.manual_seed(SAMPLING_SEED)
    else:
        # Greedy: clear sampling knobs a generation_config may carry, so generate() stays quiet.
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    files.event(
        "generating",
        f"{len(pairs)} samples, batch {spec.batch_size}, {'sampling' if sampling else 'greedy'}",
    )

    totals = dict.fromkeys(METRICS, 0.0)
    with open(Path(run.workdir) / "samples.jsonl", "w", encoding="utf-8") as out:
        for start in range(0, len(pairs), spec.batch_size):
            batch = pairs[start : start + spec.batch_size]
            prompts = [chat_text(prompt, tokenizer, generation_prompt=True) for prompt, _ in batch]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                generated = model.generate(**enc, **gen_kwargs)
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for prompt, (_, expected), text in zip(prompts, batch, texts, strict=True):
                text = text.strip()
                scores = score(text, expected)
                for name in METRICS:
                    totals[name] += scores[name]
                row = {"prompt": prompt, "expected": expected, "generated": text, "scores": scores}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            files.metric(samples_done=min(start + spec.batch_size, len(pairs)), samples_total=len(pairs))

    means = {name: totals[name] / len(pairs) for name in METRICS}
    gate = check_gate(means, spec.gate.model_dump())
    files.event(
        "gate", f"passed={gate['passed']}" + (f": {'; '.join(gate['failures'])}" if gate["failures"] else "")
    )
    return {
        "metrics": {name: means[name] for name in spec.metrics},
        "samples": len(pairs),
        "samples_file": str(Path(run.workdir) / "samples.jsonl"),
        "gate": gate,
        "generation": {
            "max_new_tokens": spec.max_new_tokens,
            "batch_size": spec.batch_size,
            "temperature": spec.temperature,
            "seed": SAMPLING_SEED if sampling else None,
        },
        "rouge": "F-measure (recall per sample in samples.jsonl)",
        "wall_seconds": time.monotonic() - started,
        "device": device,
    }
