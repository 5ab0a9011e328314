"""The vLLM server command built from a ServeSpec, and the launcher's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.serve.vllm_cmd import build_vllm_command, vllm_env
from schemas.run_serve import ServeSpec

REPO = Path(__file__).resolve().parent.parent


def _spec(**kw: Any) -> ServeSpec:
    base = {
        "run_id": "r-1",
        "address": "deployment/acme/chat",
        "model_dir": "/models/acme/bot/v3",
        "served_model_name": "bot",
        "host": "127.0.0.1",
        "port": 8123,
        "engine": "vllm",
        "device": "cuda",
        "cards": 4,
        "max_model_len": 4096,
        "api_key": "sk-internal",
        "python": "/envs/vllm-cuda/bin/python",
    }
    return ServeSpec.model_validate({**base, **kw})


def test_command_from_spec() -> None:
    """The engine environment's interpreter runs vLLM's OpenAI server module (not `vllm serve`:
    the CPU build's CLI looks up the distribution `vllm` and fails)."""
    assert build_vllm_command(_spec()) == [
        "/envs/vllm-cuda/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/acme/bot/v3",
        "--served-model-name", "bot",
        "--host", "127.0.0.1",
        "--port", "8123",
        "--tensor-parallel-size", "4",
        "--max-model-len", "4096",
        "--no-use-tqdm-on-load",
        "--shutdown-timeout", "25",
    ]  # fmt: skip


def test_api_key_goes_through_the_environment_not_argv() -> None:
    spec = _spec()
    assert "sk-internal" not in " ".join(build_vllm_command(spec))
    assert vllm_env(spec, {"PATH": "/bin"})["VLLM_API_KEY"] == "sk-internal"
    # no key in the spec: an inherited one must not leak in (the gateway would be locked out)
    assert "VLLM_API_KEY" not in vllm_env(_spec(api_key=None), {"VLLM_API_KEY": "stale"})


def test_adapters_tool_parser_and_kv_cache_size() -> None:
    argv = build_vllm_command(
        _spec(lora_modules={"b": "/m/b/adapter", "a": "/m/a/adapter"}, max_lora_rank=16,
              tool_parser="hermes", kv_cache_memory_bytes=2**30)
    )  # fmt: skip
    tail = argv[argv.index("--max-model-len") + 2 :]
    assert tail == [
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16",
        "--lora-modules", "a=/m/a/adapter", "b=/m/b/adapter",
        "--no-use-tqdm-on-load", "--shutdown-timeout", "25",
        "--kv-cache-memory-bytes", str(2**30),
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]  # fmt: skip
    # The stack's engine_args win over zsconf's defaults for the sizes and the parser.
    own = build_vllm_command(
        _spec(tool_parser="hermes", kv_cache_memory_bytes=2**30,
              engine_args={"gpu_memory_utilization": 0.5, "tool_call_parser": "llama3_json"})
    )  # fmt: skip
    assert "--kv-cache-memory-bytes" not in own and own.count("--tool-call-parser") == 1
    assert own[own.index("--tool-call-parser") + 1] == "llama3_json"


def test_engine_args_become_flags() -> None:
    argv = build_vllm_command(
        _spec(
            max_model_len=None,
            cards=0,
            engine_args={
                "gpu_memory_utilization": 0.85,
                "enforce_eager": True,
                "enable_prefix_caching": False,
                "quantization": None,
                "--dtype": "bfloat16",
                "additional_config": {"ascend_scheduler_config": {"enabled": True}},
                "allowed_origins": ["a", "b"],
            },
        )
    )
    assert "--max-model-len" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"  # at least one card
    tail = argv[argv.index("--shutdown-timeout") + 2 :]
    assert tail == [
        "--gpu-memory-utilization", "0.85",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--dtype", "bfloat16",
        "--additional-config", '{"ascend_scheduler_config":{"enabled":true}}',
        "--allowed-origins", "a", "b",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "key", ["port", "served_model_name", "tensor-parallel-size", "api_key", "--host", "lora_modules"]
)
def test_engine_args_cannot_override_managed_flags(key: str) -> None:
    with pytest.raises(ValueError, match=f"engine_args.{key}"):
        build_vllm_command(_spec(engine_args={key: "x"}))


def test_npu_same_command_and_plugin_env() -> None:
    cuda, npu = _spec(), _spec(device="npu")
    assert build_vllm_command(npu) == build_vllm_command(cuda)
    env = vllm_env(npu, {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"})
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3"  # the executor's card assignment passes through
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert "VLLM_PLUGINS" not in env  # set, it would filter out vllm-ascend's auto-registered plugin
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in vllm_env(cuda, {})
    # On CPU the compile cache vLLM can load (0.32.0 fails to load its AOT artifacts).
    cpu = vllm_env(_spec(device="cpu", cards=0), {})
    assert cpu["VLLM_USE_AOT_COMPILE"] == "0" and cpu["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert (
        vllm_env(_spec(device="cpu"), {"VLLM_CPU_OMP_THREADS_BIND": "0-3"})["VLLM_CPU_OMP_THREADS_BIND"]
        == "0-3"
    )
    assert "VLLM_USE_AOT_COMPILE" not in vllm_env(cuda, {})


def _run(tmp_path: Path, body: Any) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "serve.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return subprocess.run(
        [sys.executable, "-m", "runners.serve", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_vllm_engine_without_its_environment_is_a_one_line_error(tmp_path: Path) -> None:
    result = _run(tmp_path, _spec(python=str(tmp_path / "gone" / "bin" / "python")).model_dump())
    assert result.returncode == 1
    message = json.loads(result.stdout)["message"]
    assert message.startswith(
        f"engine vllm: the engine environment's python {tmp_path}/gone/bin/python is missing"
    )
    assert "zsconf env install" in message
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # Without an environment, vLLM must be importable here; it is not in zsconf's own environment.
    result = _run(tmp_path, _spec(python=None).model_dump())
    assert result.returncode == 1 and "zsconf env install vllm-cpu" in json.loads(result.stdout)["message"]


def test_bad_spec_names_file_and_field(tmp_path: Path) -> None:
    result = _run(tmp_path, {**_spec().model_dump(), "port": 70000})
    assert result.returncode == 1
    message = json.loads(result.stdout)["message"]
    assert str(tmp_path / "serve.json") in message and "port" in message
    assert "Traceback" not in result.stderr


def test_missing_model_fails_with_exit_1(tmp_path: Path) -> None:
    body = {
        **_spec(engine="embedded", device="cpu", api_key=None).model_dump(),
        "port": 0,
        "model_dir": str(tmp_path / "nope"),
    }
    result = _run(tmp_path, body)
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[-1])["event"] == "error"
