"""Weight validation with the platform's exact messages (REFERENCE.md "Models and weight validation").

Called by `runners.validate` (imported models) and by the engine on job outputs via
`validate_weights`. Checks stop at the first config failure that makes the rest meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MESSAGES", "STRUCTURAL_KEYS", "validate_pipeline", "validate_weights"]

MESSAGES = {
    "generation_config": "Failed to read generation_config.json.",
    "do_sample": (
        "The value of do_sample is not set to true in generation_config.json, which is inconsistent with "
        "the configured sampling parameters such as temperature, top_p, top_k etc."
    ),
    "config": "Failed to read user config.json.",
    "quant_missing": (
        "The quantization_config field is missing in config.json, please check whether it is awq quantization weight."
    ),
    "quant_extra": (
        "There is an extra quantization_config field in config.json. Please check whether it is a non-quantized weight."
    ),
    "structure": (
        "Key fields describing the model structure are missing from config.json, or their values are "
        "inconsistent with standard open source."
    ),
    "tokenizer": "Error loading tokenizer in transformers.",
    "weights": "Error loading weights in transformers.",
    # Text-to-image pipelines (diffusers folders): not in the manual, in its style.
    "model_index": "Failed to read model_index.json.",
    "pipeline": "Error loading the pipeline in diffusers.",
}
STRUCTURAL_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _sampling_inconsistent(gen: dict) -> bool:
    """do_sample false/absent while a sampling parameter asks for sampling (non-default values)."""
    if gen.get("do_sample") is True:
        return False
    temperature = gen.get("temperature")
    top_p = gen.get("top_p")
    top_k = gen.get("top_k")
    return (
        (temperature is not None and temperature != 1.0)
        or (top_p is not None and top_p != 1.0)
        or (top_k is not None and top_k not in (0, 50))
    )


def validate_pipeline(root: Path) -> list[str]:
    """Failure messages for a diffusers pipeline folder (model_index.json and its components)."""
    if _read_json(root / "model_index.json") is None:
        return [MESSAGES["model_index"]]
    try:
        from diffusers import DiffusionPipeline

        DiffusionPipeline.from_pretrained(str(root))
    except Exception:
        return [MESSAGES["pipeline"]]
    return []


def validate_weights(model_dir: str | Path, quantized: bool = False) -> list[str]:
    """Failure messages for a HuggingFace model folder, or a diffusers pipeline's ([] = valid)."""
    root = Path(model_dir)
    if (root / "model_index.json").exists() and not (root / "config.json").exists():
        return validate_pipeline(root)
    failures: list[str] = []
    config = _read_json(root / "config.json")
    if config is None:
        return [MESSAGES["config"]]
    gen_path = root / "generation_config.json"
    gen = _read_json(gen_path)
    if gen is None:
        failures.append(MESSAGES["generation_config"])
    elif _sampling_inconsistent(gen):
        failures.append(MESSAGES["do_sample"])
    has_quant = "quantization_config" in config
    if quantized and not has_quant:
        failures.append(MESSAGES["quant_missing"])
    if not quantized and has_quant:
        failures.append(MESSAGES["quant_extra"])
    structural_ok = all(
        isinstance(config.get(k), str if k == "model_type" else int)
        and not isinstance(config.get(k), bool)
        and (k == "model_type" or config[k] > 0)
        for k in STRUCTURAL_KEYS
    )
    if structural_ok:
        num_heads = config["num_attention_heads"]
        structural_ok = config["hidden_size"] % num_heads == 0
    if not structural_ok:
        failures.append(MESSAGES["structure"])
        return failures  # loading would fail for the same reason
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(root))
    except Exception:  # any loader failure is the platform's one message
        failures.append(MESSAGES["tokenizer"])
    try:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(root), dtype=torch.float32)
        if not quantized:
            # from_pretrained only warns on missing tensors (then initialises them at random).
            from safetensors import safe_open

            files = sorted(root.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError("no safetensors weights")
            stored: set[str] = set()
            for f in files:
                with safe_open(str(f), "pt") as fh:
                    stored.update(fh.keys())
            expected = set(model.state_dict())
            tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
            if expected - stored - tied:
                raise KeyError(f"missing tensors: {sorted(expected - stored - tied)[:3]}")
    except Exception:
        failures.append(MESSAGES["weights"])
    return failures
