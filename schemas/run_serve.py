"""The JSON spec of one model-server process (`python -m runners.serve SPEC.json`).

Written by the executor (one file per instance, each with its own port) and read by
`runners/serve/__main__.py`. Follows the runner envelope of CONTRACTS.md §2, adapted to a server:
a server has no `output_dir` or `result.json`; it binds `host:port` and prints one ready line.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServeSpec"]


class ServeSpec(BaseModel):
    """One model server instance: which model, which engine, where it listens."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(description="id of this instance's run (for logs)")
    address: str = Field(description="the deployment's address, e.g. deployment/acme/chat")
    model_dir: str = Field(description="absolute path of a HuggingFace-format model folder")
    served_model_name: str = Field(min_length=1, description="the `model` clients send")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port (reported on ready)")
    engine: Literal["embedded", "vllm"] = "embedded"
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    cards: int = Field(default=0, ge=0, le=64, description="accelerator cards (vLLM tensor parallel size)")
    max_model_len: int | None = Field(default=None, ge=16, le=1048576)
    api_key: str | None = Field(default=None, description="internal key the gateway sends as a Bearer token")
    engine_args: dict[str, Any] = Field(default_factory=dict)
    workdir: str | None = Field(default=None, description="run directory (events.jsonl goes here when set)")
