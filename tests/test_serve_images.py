"""The text-to-image model server (`engine: diffusers`) as a real process on debug/tiny-sd, called with
httpx and the openai SDK.

One server for the module (starting one imports torch and diffusers: seconds). Its start is watched
for /health 503 -> 200; the last test stops it with SIGTERM while an image is being made, so it must
stay last in the file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import TEST_DEVICE
from PIL import Image

from runners.serve.process import ServeProcess

pytestmark = pytest.mark.slow

KEY = "internal-test-key"
NAME = "painter"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def entry() -> dict[str, Any]:
    from zsconf.catalog import load_catalog

    return {"name": "debug/tiny-sd", **load_catalog().model("debug/tiny-sd").model_dump(mode="json")}


def _spec(model_dir: Path, workdir: Path, entry: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "run_id": "r-img",
        "address": "deployment/acme/painter",
        "model_dir": str(model_dir),
        "served_model_name": NAME,
        "engine": "diffusers",
        "device": TEST_DEVICE,
        "api_key": KEY,
        "workdir": str(workdir),
        "images": entry["images"],
        **over,
    }


@pytest.fixture(scope="module")
def server(
    tiny_sd: Path, entry: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """The server on a port chosen here, so /health can be watched while ServeProcess waits for the
    ready line (`health_seen`: the status codes seen until the first 200)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            with contextlib.suppress(httpx.TransportError):  # not bound yet
                seen.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    work = tmp_path_factory.mktemp("serve-images")
    srv = ServeProcess(_spec(tiny_sd, work, entry, port=port), work / "serve.json", work / "runner.log")
    watcher.join(30)
    srv.health_seen = seen  # type: ignore[attr-defined]
    srv.workdir = work  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(server: ServeProcess, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + "/v1/images/generations", json=body, headers=HEADERS, timeout=timeout)


def _png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(raw))


def test_health_503_while_loading_then_ok_and_auth(server: ServeProcess) -> None:
    seen: list[int] = server.health_seen  # type: ignore[attr-defined]
    assert seen[0] == 503 and seen[-1] == 200 and set(seen) == {503, 200}
    assert server.ready["device"] == TEST_DEVICE and server.ready["model"] == NAME
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and {"queued", "requests", "images", "cancelled"} <= health.keys()
    body = {"model": NAME, "prompt": "a cat"}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        bad = httpx.post(server.url + "/v1/images/generations", json=body, headers=headers)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    models = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == [NAME]


def test_openai_sdk_two_images_with_style(client: openai.OpenAI, entry: dict[str, Any]) -> None:
    resp = client.images.generate(
        model=NAME,
        prompt="a cat in the forest",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"num_inference_steps": 2, "seed": 7, "style": "cartoon"},
    )
    assert resp.created > 0 and len(resp.data) == 2
    words = entry["images"]["styles"]["cartoon"]
    for item in resp.data:
        assert item.revised_prompt == f"a cat in the forest, {words}"
        assert item.b64_json is not None
        image = _png(item.b64_json)
        assert image.size == (256, 256) and image.mode == "RGB"
    assert resp.data[0].b64_json != resp.data[1].b64_json  # seeds 7 and 8


def test_size_is_height_by_width_and_defaults(server: ServeProcess, entry: dict[str, Any]) -> None:
    resp = _post(
        server, {"model": NAME, "prompt": "a wide street", "size": "360x640", "num_inference_steps": 1}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"created", "data"} and len(body["data"]) == 1  # n defaults to 1
    assert set(body["data"][0]) == {"b64_json", "revised_prompt"}
    assert _png(body["data"][0]["b64_json"]).size == (640, 360)  # PIL: (width, height)
    assert body["data"][0]["revised_prompt"] == "a wide street"  # default style: standard, no words


def test_same_seed_same_bytes_other_seed_differs(server: ServeProcess) -> None:
    body = {"model": NAME, "prompt": "a red house", "size": "256x256", "num_inference_steps": 2, "seed": 42}
    first, again = (_post(server, body).json()["data"][0]["b64_json"] for _ in range(2))
    other = _post(server, {**body, "seed": 43}).json()["data"][0]["b64_json"]
    assert first == again
    assert other != first
    # No seed: one drawn per request.
    unseeded = [_post(server, {**body, "seed": None}).json()["data"][0]["b64_json"] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


@pytest.mark.parametrize(
    ("change", "param", "status"),
    [
        ({"size": "100x100"}, "size", 400),
        ({"size": "640x640"}, "size", 400),
        ({"num_inference_steps": 0}, "num_inference_steps", 400),
        ({"num_inference_steps": 51}, "num_inference_steps", 400),
        ({"n": 5}, "n", 400),
        ({"n": 0}, "n", 400),
        ({"n": "2"}, "n", 400),
        ({"style": "baroque"}, "style", 400),
        ({"seed": -1}, "seed", 400),
        ({"response_format": "url"}, "response_format", 400),
        ({"model": "other"}, "model", 404),
        ({"prompt": None}, "prompt", 400),
        ({"prompt": ""}, "prompt", 400),
        ({"prompt": "x" * 1001}, "prompt", 400),
        ({"negative_prompt": "x" * 1001}, "negative_prompt", 400),
    ],
)
def test_invalid_requests_name_the_param(
    server: ServeProcess, change: dict[str, Any], param: str, status: int
) -> None:
    body = {"model": NAME, "prompt": "a cat", "size": "256x256", "num_inference_steps": 1, **change}
    body = {k: v for k, v in body.items() if v is not None}  # None = leave the field out
    resp = _post(server, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}:") or param == "model"
    if param == "model":
        assert error["code"] == "model_not_found"


def test_extra_fields_ignored_and_limits_accepted(server: ServeProcess) -> None:
    body = {
        "model": NAME,
        "prompt": "x" * 1000,
        "negative_prompt": "blurry",
        "n": 4,
        "size": "256x256",
        "num_inference_steps": 1,
        "style": "photography",
        "response_format": "b64_json",
        "user": "u-1",
        "quality": "hd",
        "something_new": {"a": 1},
    }
    resp = _post(server, body)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 4


def test_disconnected_requests_are_dropped_and_health_answers_meanwhile(server: ServeProcess) -> None:
    before = httpx.get(server.url + "/health").json()
    slow = {"model": NAME, "prompt": "a castle", "size": "1024x1024", "num_inference_steps": 50, "seed": 1}

    timed_out: list[float] = []

    def hang_up(timeout: float) -> None:
        try:
            _post(server, slow, timeout=timeout)
        except httpx.TimeoutException:
            timed_out.append(timeout)

    running = threading.Thread(target=hang_up, args=(1.5,))  # started, then stopped at a step
    running.start()
    time.sleep(0.3)
    queued = threading.Thread(target=hang_up, args=(0.5,))  # gone before its turn: never started
    queued.start()
    time.sleep(0.2)
    start = time.monotonic()
    during = httpx.get(server.url + "/health", timeout=5)
    assert during.status_code == 200 and time.monotonic() - start < 2  # the event loop is free
    running.join()
    queued.join()
    assert sorted(timed_out) == [0.5, 1.5]
    small = _post(server, {"model": NAME, "prompt": "a dot", "size": "256x256", "num_inference_steps": 1})
    assert small.status_code == 200
    after = httpx.get(server.url + "/health").json()
    assert after["cancelled"] == before["cancelled"] + 2
    assert after["images"] == before["images"] + 1  # only the small one made an image
    assert after["queued"] == 0


def test_bad_spec_without_image_options_exits_1(tiny_sd: Path, entry: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="images: engine diffusers needs"):
        ServeProcess(_spec(tiny_sd, tmp_path, entry, images=None), tmp_path / "s.json")


def test_sigterm_finishes_the_image_in_flight_and_exits_0(server: ServeProcess) -> None:
    """Last: stops the module's server."""
    result: dict[str, Any] = {}
    body = {"model": NAME, "prompt": "a boat", "size": "512x512", "num_inference_steps": 12, "seed": 3}

    def call() -> None:
        result["resp"] = _post(server, body)

    started = httpx.get(server.url + "/health").json()["requests"]  # counts jobs the worker began
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/health").json()["requests"] == started and time.monotonic() < deadline:
        time.sleep(0.02)
    in_flight = "resp" not in result
    server.proc.send_signal(signal.SIGTERM)
    caller.join(60)
    assert server.proc.wait(60) == 0
    assert in_flight  # the signal came while the image was being made
    resp = result["resp"]
    assert resp.status_code == 200 and _png(resp.json()["data"][0]["b64_json"]).size == (512, 512)
    events = [json.loads(x)["event"] for x in (server.workdir / "events.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    assert events == ["loading", "ready", "stopped"]
