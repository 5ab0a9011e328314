"""The embedded server loads llm-compressor (compressed-tensors) output and generates with it.

The tiny Qwen2 is quantized here with `oneshot` (data-free schemes: FP8_DYNAMIC and W8A8 with
dynamic per-token activations), served as a real process, and its greedy answer checked against
transformers' own generate on the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

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

    (tmp_path / "run").mkdir()
    spec = {
        "run_id": "r-q",
        "address": "deployment/acme/q",
        "model_dir": str(folder),
        "served_model_name": "tiny",
    }
    srv = ServeProcess(spec, tmp_path / "run" / "serve.json")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        resp = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
        assert resp.choices[0].message.content == expected
        assert resp.usage is not None
        assert resp.usage.prompt_tokens == ids.shape[1] and resp.usage.completion_tokens == len(out)
    finally:
        assert srv.stop() == 0
