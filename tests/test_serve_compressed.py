"""The embedded server loads llm-compressor (compressed-tensors) output and generates with it.

The tiny Qwen2 is quantized here with `oneshot` (data-free schemes: FP8_DYNAMIC and W8A8 with
dynamic per-token activations), served as a real process, and its greedy answer checked against
transformers' own generate on the same folder.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import TEST_DEVICE, TEST_ENGINE_ARGS

from runners.serve.process import ServeProcess

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "hello 数据"}]


def _quantize(base: Path, out: Path, scheme: str) -> Path:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"]))
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "W8A8"])
def test_compressed_tensors_model_serves(scheme: str, tiny_qwen2: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _quantize(tiny_qwen2, tmp_path / f"tiny-{scheme.lower()}", scheme)
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == (
        "compressed-tensors"
    )
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :].tolist()
    expected = tok.decode(out, skip_special_tokens=True)

    run = tmp_path / "run"
    run.mkdir()
    env: dict[str, str] = {}
    if scheme == "W8A8":
        # this one is started the way the engine's apply starts a deployment: the generic envelope,
        # the port and the internal key from the environment
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spec: dict[str, Any] = {
            "run_id": "r-q", "address": "deployment/acme/q", "workdir": str(run), "output_dir": None,
            "device": TEST_DEVICE, "spec": {"model": "bot@1", "engine": "embedded", "max_model_len": 512,
                                            "engine_args": TEST_ENGINE_ARGS},
            "inputs": {"model_dir": str(folder), "model_version": 1}, "resume": False,
        }  # fmt: skip
        env = {"ZSCONF_PORT": str(port), "ZSCONF_SERVE_API_KEY": "k-internal"}
        name, key = "q", "k-internal"
    else:
        spec = {
            "run_id": "r-q",
            "address": "deployment/acme/q",
            "model_dir": str(folder),
            "served_model_name": "tiny",
            "device": TEST_DEVICE,
            "engine_args": TEST_ENGINE_ARGS,
        }
        name, key = "tiny", "unused"
    srv = ServeProcess(spec, run / "serve.json", env=env)
    try:
        if env:
            assert srv.port == port
            assert json.loads((run / "endpoint.json").read_text())["url"] == f"http://127.0.0.1:{port}"
            assert httpx.get(srv.url + "/v1/models").status_code == 401
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [name]
        resp = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=10, temperature=0)
        assert resp.choices[0].message.content == expected
        assert resp.usage is not None
        assert resp.usage.prompt_tokens == ids.shape[1] and resp.usage.completion_tokens == len(out)
    finally:
        assert srv.stop() == 0
