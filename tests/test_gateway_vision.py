"""Image understanding through the gateway: `image_url` parts of chat messages, checked against the
stack's media policy and the deployment's task, with a real gateway process in front of a real stub
upstream (which echoes what reached it), called with the openai SDK and httpx.

What the model itself makes of the image is tested against vLLM in tests/test_vision_vllm.py.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_harness import GatewayEnv, start_stub

MAX_BYTES = 4000


def _png(side: int = 16) -> str:
    """A PNG of noise (it does not compress: `side` sets its size in bytes)."""
    import os

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ask(url: str, text: str = "what is this?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    stub = start_stub(ident="vl")
    env = GatewayEnv(tmp_path_factory.mktemp("gw"))
    inst = {"id": "x-0", "url": f"http://127.0.0.1:{stub.port}/v1"}
    env.config["deployments"] = [
        {"tenant": "acme", "name": "vl", "instances": [inst], "task": "image-understanding"},
        {"tenant": "acme", "name": "chat", "instances": [inst]},
    ]
    env.config["groups"] = [
        {
            "tenant": "acme",
            "name": "g",
            "services": ["vl", "chat"],
            "moderation": {"blocklist": ["forbidden"]},
        }
    ]
    env.config["media"] = {
        "image_hosts": ["pics.example.com", "Img.CDN.example.org"],
        "max_image_bytes": MAX_BYTES,
    }
    secret, _ = env.add_key("acme", "g")
    env.start()
    env.secret = secret  # type: ignore[attr-defined]
    env.stub = stub  # type: ignore[attr-defined]
    yield env
    env.close()
    stub.stop()


def _client(gw: GatewayEnv) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=gw.secret, max_retries=0)  # type: ignore[attr-defined]


def _refused(gw: GatewayEnv, model: str, messages: list[dict]) -> dict:
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={"model": model, "messages": messages},
        headers={"Authorization": f"Bearer {gw.secret}"},  # type: ignore[attr-defined]
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "500002"
    return err


def test_a_data_url_image_reaches_an_image_understanding_model(gw: GatewayEnv) -> None:
    image = _png()
    out = _client(gw).chat.completions.create(model="vl", messages=_ask(image), max_tokens=4)  # type: ignore[arg-type]
    assert out.choices[0].message.content
    last = httpx.get(f"http://127.0.0.1:{gw.stub.port}/last").json()  # type: ignore[attr-defined]
    assert last["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": image}}
    # A listed host (matched exactly, case aside) passes; the model server fetches it.
    for url in ("https://pics.example.com/a.png", "http://img.cdn.example.org/b.jpg"):
        _client(gw).chat.completions.create(model="vl", messages=_ask(url), max_tokens=2)  # type: ignore[arg-type]


def test_image_parts_are_refused_with_the_part_named(gw: GatewayEnv) -> None:
    err = _refused(gw, "chat", _ask(_png()))
    assert "messages[0].content[1]" in err["message"] and "reads text only" in err["message"]
    cases = [
        (_ask("https://evil.example.net/x.png"), "messages[0].content[1].image_url.url: images are not fetched from evil.example.net"),
        (_ask("https://cdn.example.org/x.png"), "not fetched from cdn.example.org"),  # exact hosts only
        (_ask("file:///etc/passwd"), "expected a base64 data URL"),
        (_ask("data:text/plain;base64,aGk="), "a data URL must be data:image/"),
        (_ask("data:image/png;base64,@@@notbase64"), "not valid base64"),
        (_ask(_png(64)), f"over {MAX_BYTES} bytes"),
        (_ask(""), "image_url.url must be a non-empty string"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "content[0].type must be text or image_url"),
    ]  # fmt: skip
    for messages, words in cases:
        assert words in _refused(gw, "vl", messages)["message"], words


def test_moderation_reads_the_text_beside_the_image(gw: GatewayEnv) -> None:
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={"model": "vl", "messages": _ask(_png(), "something forbidden")},
        headers={"Authorization": f"Bearer {gw.secret}"},  # type: ignore[attr-defined]
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "600003"


def test_text_models_do_not_make_images_and_image_calls_need_an_image_model(gw: GatewayEnv) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        _client(gw).images.generate(model="chat", prompt="a cat")
    assert exc.value.status_code == 400 and "does not make images" in str(exc.value)
    assert exc.value.body["code"] == "500002"  # type: ignore[index]
