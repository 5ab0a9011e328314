"""Compression strategy names -> llm-compressor recipes.

Called by `runners.compress.run` (and bench/compress.py). `plan_strategy` is pure (no torch) so it
can refuse an unsupported combination before any model is loaded; `build_recipe` imports
llm-compressor. Recipes follow llm-compressor's own examples:
- smoothquant-w8a8: SmoothQuantModifier + GPTQModifier(scheme="W8A8")  (examples/quantization_w8a8_int8)
- awq-w4a16: AWQModifier + QuantizationModifier(scheme="W4A16")         (examples/awq; the 0.14 API
  where AWQ is a transform followed by a quantization modifier)
- gptq-w4a16 / gptq-w8a8: GPTQModifier(scheme=...)                     (examples/quantization_w4a16)
- fp8-dynamic: QuantizationModifier(scheme="FP8_DYNAMIC"), data free   (examples/quantization_w8a8_fp8)
- WxAx[Cx]: GPTQ with the preset scheme of that name; C8 adds an FP8 KV-cache scheme (the 8-bit KV
  cache format vLLM loads; there is no INT8 KV cache in vLLM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runners.runfiles import UserError

__all__ = ["FP8_KV_CACHE", "StrategyPlan", "build_recipe", "plan_strategy"]

# Weight group size for 4-bit schemes (the W4A16 preset's group size).
GROUP_SIZE = 128
FP8_KV_CACHE = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
_WAC_RE = re.compile(r"^W(\d+)A(\d+)(?:C(\d+))?$")
# WxAx forms we map to a preset scheme vLLM can serve (weights, activations) -> preset.
_WAC_SCHEMES = {(4, 16): "W4A16", (8, 16): "W8A16", (8, 8): "W8A8", (4, 8): "W4A8"}


@dataclass(frozen=True)
class StrategyPlan:
    """What a strategy does: `algorithm` (smoothquant+gptq, awq, gptq, rtn), the preset
    `scheme`, the KV-cache bits (None = unquantized), and whether it needs calibration data."""

    strategy: str
    algorithm: str
    scheme: str
    weight_bits: int
    activation_bits: int
    kv_cache_bits: int | None
    needs_calibration: bool
    group_size: int | None

    def summary(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "scheme": self.scheme,
            "weights": f"int{self.weight_bits}" if self.scheme != "FP8_DYNAMIC" else "fp8",
            "activations": (
                "none (16-bit)"
                if self.activation_bits == 16
                else (
                    "fp8 dynamic per-token"
                    if self.scheme == "FP8_DYNAMIC"
                    else f"int{self.activation_bits} dynamic per-token"
                )
            ),
            "group_size": self.group_size,
            "kv_cache": "fp8" if self.kv_cache_bits == 8 else None,
        }


def plan_strategy(strategy: str) -> StrategyPlan:
    """Map a strategy name to a plan; raise UserError for a combination we cannot produce."""
    named = {
        "smoothquant-w8a8": StrategyPlan(strategy, "smoothquant+gptq", "W8A8", 8, 8, None, True, None),
        "awq-w4a16": StrategyPlan(strategy, "awq", "W4A16", 4, 16, None, True, GROUP_SIZE),
        "gptq-w4a16": StrategyPlan(strategy, "gptq", "W4A16", 4, 16, None, True, GROUP_SIZE),
        "gptq-w8a8": StrategyPlan(strategy, "gptq", "W8A8", 8, 8, None, True, None),
        "fp8-dynamic": StrategyPlan(strategy, "rtn", "FP8_DYNAMIC", 8, 8, None, False, None),
    }
    if strategy in named:
        return named[strategy]
    match = _WAC_RE.match(strategy)
    if not match:
        raise UserError(f"unknown compression strategy {strategy!r}")
    w, a = int(match[1]), int(match[2])
    c = int(match[3]) if match[3] else None
    if c not in (None, 8, 16):
        raise UserError(f"strategy {strategy}: KV cache bits must be 8 (FP8 KV cache) or 16 (none), got {c}")
    scheme = _WAC_SCHEMES.get((w, a))
    if scheme is None:
        supported = ", ".join(f"W{k[0]}A{k[1]}" for k in _WAC_SCHEMES)
        raise UserError(
            f"strategy {strategy}: W{w}A{a} is not supported (weights/activations one of {supported}; "
            "optionally C8 for an 8-bit KV cache)"
        )
    return StrategyPlan(
        strategy, "gptq", scheme, w, a, 8 if c == 8 else None, True, GROUP_SIZE if w == 4 else None
    )


def build_recipe(plan: StrategyPlan, smoothing_strength: float = 0.5) -> list[Any]:
    """The llm-compressor modifiers for `plan` (lm_head stays unquantized, as in the examples)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = ["lm_head"]
    kv = {"kv_cache_scheme": dict(FP8_KV_CACHE)} if plan.kv_cache_bits == 8 else {}
    if plan.algorithm == "smoothquant+gptq":
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        return [
            SmoothQuantModifier(smoothing_strength=smoothing_strength),
            GPTQModifier(targets="Linear", scheme=plan.scheme, ignore=ignore, **kv),
        ]
    if plan.algorithm == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [
            AWQModifier(),
            QuantizationModifier(targets="Linear", scheme=plan.scheme, ignore=ignore, **kv),
        ]
    if plan.algorithm == "gptq":
        return [GPTQModifier(targets="Linear", scheme=plan.scheme, ignore=ignore, **kv)]
    return [QuantizationModifier(targets="Linear", scheme=plan.scheme, ignore=ignore, **kv)]
