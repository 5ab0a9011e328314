"""One compression run: calibrate, quantize with llm-compressor `oneshot`, save compressed-tensors,
measure size and held-out perplexity before and after.

Called by `runners/compress/__main__.py` (the engine runs it as a process) and bench/compress.py.
Imports torch / transformers / llmcompressor inside functions only.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from runners.compress.cpu_guard import no_pinning_without_accelerator
from runners.compress.perplexity import perplexity
from runners.compress.strategies import build_recipe, plan_strategy
from runners.runfiles import RunFiles, UserError
from runners.samples import chat_text, read_samples
from schemas.run_compress import CompressRunSpec

__all__ = ["compress", "folder_weight_bytes", "gate_passed"]

# Held-out texts for perplexity: never among the calibration samples.
MAX_HELDOUT = 32
# The default calibration set: bilingual paragraphs, one per non-blank line.
BUILTIN_CALIBRATION = Path(__file__).with_name("calibration.txt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of weight files in a model folder (config/tokenizer files excluded)."""
    return sum(
        p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    )


def _split(run: CompressRunSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(calibration samples, held-out samples, description). A dataset is read only as far as
    needed: `samples` for calibration plus up to MAX_HELDOUT held out after them."""
    cal = run.spec.calibration
    ds = run.inputs.datasets.get("calibration")
    if ds is not None:
        records = read_samples(ds.path, ds.format, cal.samples + MAX_HELDOUT)
        if len(records) < 2:
            raise UserError(f"{ds.path}: calibration needs at least 2 samples, found {len(records)}")
        # Hold out what lies beyond `samples`, but always at least a fifth (>= 1) of what was read.
        held = max(len(records) - cal.samples, max(1, len(records) // 5))
        held = min(held, MAX_HELDOUT)
        source = {"source": ds.path, "format": ds.format}
    else:
        lines = BUILTIN_CALIBRATION.read_text(encoding="utf-8").splitlines()
        records = [{"text": line.strip()} for line in lines if line.strip()]
        held = max(1, len(records) // 4)
        source = {"source": "builtin", "format": "text"}
    calib, heldout = records[:-held], records[-held:]
    return calib[: cal.samples], heldout, source


def _tokenized_dataset(texts: list[str], tokenizer: Any, max_length: int) -> Any:
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)
    rows = [(i, m) for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True) if len(i) > 0]
    # Why drop empty rows: an empty sample becomes torch.tensor([[]]) in transformers'
    # default_data_collator (llm-compressor's default), which is float32, and the embedding then
    # fails with "Expected tensor for argument #1 'indices' ... FloatTensor". Seen with Qwen2, whose
    # tokenizer adds no BOS token to an empty text (Llama's adds one, so its rows are never empty);
    # GPTQ fails the same way as AWQ once the empty sample is among those drawn.
    if not rows:
        raise UserError("no calibration sample has any tokens")
    return Dataset.from_dict({"input_ids": [r[0] for r in rows], "attention_mask": [r[1] for r in rows]})


def gate_passed(increase: float, limit: float | None) -> bool:
    """The compression gate: passed unless the perplexity rose by more than `limit` (a fraction)."""
    return True if limit is None else increase <= limit


def _device(requested: str) -> str:
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def compress(run: CompressRunSpec, files: RunFiles) -> dict[str, Any]:
    """Run the compression described by `run`; return result.json `outputs`."""
    started = time.monotonic()
    spec = run.spec
    plan = plan_strategy(spec.strategy)  # refuse before the heavy imports (~10 s for llmcompressor)
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(run.inputs.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder (no config.json)")
    out = Path(run.output_dir)
    if out.exists():
        if not run.resume:
            raise UserError(f"{out}: output folder already exists")
        shutil.rmtree(out)  # a resumed run starts compression again from the base model
    tmp = out.with_name(f".{out.name}.partial-{run.run_id}")
    if tmp.exists():
        shutil.rmtree(tmp)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calib, heldout, source = _split(run)
    seq_len = spec.calibration.sequence_length
    heldout_texts = [chat_text(r, tokenizer) for r in heldout]
    device = _device(run.device)
    files.event("loading", f"model {model_dir} ({plan.strategy}: {plan.algorithm} {plan.scheme})")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")

    ppl_before = perplexity(model.to(device), tokenizer, heldout_texts, seq_len)
    model.to("cpu")  # oneshot onloads layer by layer itself
    files.metric(stage="before", perplexity=ppl_before)

    recipe = build_recipe(plan, spec.smoothing_strength)
    kwargs: dict[str, Any] = {}
    if plan.needs_calibration:
        calib_texts = [chat_text(r, tokenizer) for r in calib]
        dataset = _tokenized_dataset(calib_texts, tokenizer, seq_len)
        kwargs = {"dataset": dataset, "max_seq_length": seq_len, "num_calibration_samples": len(dataset)}
        files.event(
            "calibrating", f"{len(dataset)} samples from {source['source']}, sequence length {seq_len}"
        )
    t0 = time.monotonic()
    with no_pinning_without_accelerator() as guarded:
        oneshot(model=model, recipe=recipe, **kwargs)
    oneshot_s = time.monotonic() - t0
    files.event("quantized", f"oneshot finished in {oneshot_s:.2f}s")

    model.save_pretrained(tmp, save_compressed=True)
    tokenizer.save_pretrained(tmp)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, tmp / "generation_config.json")
    del model
    config = json.loads((tmp / "config.json").read_text())
    qcfg = config.get("quantization_config") or {}
    if qcfg.get("quant_method") != "compressed-tensors":
        raise RuntimeError(f"saved config has no compressed-tensors quantization_config: {qcfg!r}")

    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype="auto").to(device)
    ppl_after = perplexity(reloaded, tokenizer, heldout_texts, seq_len)
    del reloaded
    files.metric(stage="after", perplexity=ppl_after)

    size_before, size_after = folder_weight_bytes(model_dir), folder_weight_bytes(tmp)
    tmp.rename(out)
    increase = (ppl_after - ppl_before) / ppl_before
    limit = spec.gate.max_perplexity_increase
    passed = gate_passed(increase, limit)
    files.event(
        "gate", f"perplexity {ppl_before:.4g} -> {ppl_after:.4g} ({increase:+.2%}); gate passed={passed}"
    )
    return {
        "model_dir": str(out),
        "strategy": plan.strategy,
        "quantization": {
            **plan.summary(),
            "smoothing_strength": spec.smoothing_strength
            if plan.algorithm.startswith("smoothquant")
            else None,
        },
        "quantization_config": {
            k: qcfg.get(k) for k in ("quant_method", "format", "kv_cache_scheme") if k in qcfg
        },
        "calibration": {**source, "samples": len(kwargs.get("dataset", [])), "sequence_length": seq_len},
        "heldout": {**source, "samples": len(heldout_texts)},
        "size_bytes_before": size_before,
        "size_bytes_after": size_after,
        "size_ratio": size_after / size_before if size_before else None,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "perplexity_increase": increase,
        "gate": {"max_perplexity_increase": limit, "passed": passed},
        "cpu_pinning_guard": guarded,
        "oneshot_seconds": oneshot_s,
        "wall_seconds": time.monotonic() - started,
        "device": device,
    }
