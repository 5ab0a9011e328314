"""The JSON spec of one model-server process (`python -m runners.serve SPEC.json`).

Written by the executor (one file per instance, each with its own port) and read by
`runners/serve/__main__.py`. Follows the runner envelope of CONTRACTS.md §2, adapted to a server:
a server has no `output_dir` or `result.json`; it binds `host:port` and prints one ready line.
The generic envelope itself is accepted too (`serve_spec_from_envelope`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServeSpec", "serve_spec_from_envelope"]


class ServeSpec(BaseModel):
    """One model server instance: which model, which engine, where it listens."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(description="id of this instance's run (for logs)")
    address: str = Field(description="the deployment's address, e.g. deployment/acme/chat")
    model_dir: str = Field(description="absolute path of a HuggingFace-format model folder")
    served_model_name: str = Field(min_length=1, description="the `model` clients send")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port (reported on ready)")
    engine: Literal["embedded", "vllm", "diffusers"] = "embedded"
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    cards: int = Field(default=0, ge=0, le=64, description="accelerator cards (vLLM tensor parallel size)")
    max_model_len: int | None = Field(default=None, ge=16, le=1048576)
    api_key: str | None = Field(default=None, description="internal key the gateway sends as a Bearer token")
    engine_args: dict[str, Any] = Field(default_factory=dict)
    workdir: str | None = Field(default=None, description="run directory (events.jsonl goes here when set)")
    # vLLM only. The interpreter of the engine environment vLLM is installed in (zsconf.envs); None =
    # this interpreter, when vLLM is importable here.
    python: str | None = Field(default=None, description="the engine environment's python (vLLM)")
    tool_parser: str | None = Field(default=None, description="vLLM tool-call parser for the model family")
    # LoRA adapters served beside the base weights: served name -> adapter folder (peft format).
    lora_modules: dict[str, str] = Field(default_factory=dict)
    max_lora_rank: int | None = Field(default=None, ge=1, le=512)
    # vLLM on CPU reserves 90 % of the host's memory unless told a KV-cache size: the plan gives one
    # from the flavor, so servers (and jobs) can share a machine.
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1)
    # diffusers only: what the text-to-image model accepts (schemas.catalog.ImageOptions, dumped).
    images: dict[str, Any] | None = None
    # vLLM serving an image-understanding model: the hosts it may fetch image URLs from
    # (platform.gateway.image_hosts; [] = none, only data URLs). None: a text model.
    media_hosts: list[str] | None = None


def _visible_cards(env: Mapping[str, str]) -> int:
    for var in ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = env.get(var, "").strip()
        if value:
            return len([c for c in value.split(",") if c.strip()])
    return 0


def serve_spec_from_envelope(data: Mapping[str, Any], env: Mapping[str, str]) -> ServeSpec:
    """The generic runner envelope (CONTRACTS.md §2) the engine writes for a deployment -> ServeSpec.

    `spec` is the Deployment's model_dump, `inputs.model_dir` the model version's folder. The served
    name is `inputs.served_model_name`, else the deployment's name (what clients send as `model`).
    The address and port come from `ZSCONF_HOST` and `ZSCONF_PORT` (set by the executor), the internal key from
    `ZSCONF_SERVE_API_KEY` (secrets stay out of spec files), cards from the visible-devices
    variable the executor set. The engine is the one the plan chose (`inputs.engine`, with the
    environment's interpreter in `inputs.engine_python`); an envelope without it falls back to
    vLLM on cuda/npu and the embedded engine otherwise."""
    spec = dict(data.get("spec") or {})
    inputs = dict(data.get("inputs") or {})
    address = str(data.get("address", ""))
    device = str(data.get("device") or "auto")
    engine = inputs.get("engine") or spec.get("engine", "auto")
    if engine == "auto":
        engine = "vllm" if device in ("cuda", "npu") else "embedded"
    return ServeSpec.model_validate(
        {
            "run_id": data.get("run_id"),
            "address": address,
            "model_dir": inputs.get("model_dir"),
            "served_model_name": inputs.get("served_model_name") or address.rsplit("/", 1)[-1],
            "host": env.get("ZSCONF_HOST") or "127.0.0.1",
            "port": int(env.get("ZSCONF_PORT") or 0),
            "engine": engine,
            "device": device,
            "cards": int(inputs.get("cards") or _visible_cards(env)),
            "max_model_len": spec.get("max_model_len"),
            "api_key": env.get("ZSCONF_SERVE_API_KEY") or inputs.get("api_key"),
            "engine_args": spec.get("engine_args") or {},
            "workdir": data.get("workdir"),
            "python": inputs.get("engine_python"),
            "tool_parser": inputs.get("tool_parser"),
            "lora_modules": inputs.get("lora_modules") or {},
            "max_lora_rank": inputs.get("max_lora_rank"),
            "kv_cache_memory_bytes": inputs.get("kv_cache_memory_bytes"),
            "images": inputs.get("images"),
            "media_hosts": inputs.get("media_hosts"),
        }
    )
