"""A stack with a text-to-image deployment, end to end through the CLI as a person runs it:
`plan` shows the diffusers engine and the catalog's time and cost per image and refuses engines
that cannot serve the model; `apply` builds debug/tiny-sd and starts its server and the gateway;
the openai SDK makes images both ways (base64, and URLs only the same key can fetch), with a seed
giving byte-identical PNGs, a bad size refused with the parameter named, and the key's images per
minute limit answered 429/700006 with Retry-After; `zsconf usage` shows what was made.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from test_ray_stack import cli

pytestmark = pytest.mark.slow

STACK = """\
platform:
  device: cpu
  default_tenant: art
  gateway: {image_url_ttl: 10m}
tenants:
  art: {quotas: {max_cards: 0}}
datasets:
  prompts: {path: data/prompts.jsonl, format: alpaca}
models:
  painter: {base: debug/tiny-sd}
  sd21: {base: StableDiffusion-V2.1, path: SD21_PATH}
deployments:
  draw: {model: painter@latest}
  sd21-draw: {model: sd21@latest}
service_groups:
  art-app:
    services: [draw, sd21-draw]
    keys: 1
    rate_limits: {per_key: {ipm: 8}, per_model: {sd21-draw: {ipm: 1}}}
    moderation: {blocklist: [forbidden]}
"""


def _size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).size  # (width, height)


def test_an_image_deployment_validates_plans_applies_and_serves(tmp_path: Path, tiny_sd: Path) -> None:
    from zsconf.engine import Engine
    from zsconf.engine.gateway import gateway_url

    stack = tmp_path / "art"
    (stack / "data").mkdir(parents=True)
    # StableDiffusion-V2.1 from local weights, as a real checkpoint is imported (tiny-sd's files).
    (stack / "stack.yaml").write_text(STACK.replace("SD21_PATH", str(tiny_sd)))
    (stack / "data" / "prompts.jsonl").write_text(json.dumps({"instruction": "a cat", "output": "x"}) + "\n")

    plan = cli("plan", cwd=stack)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "engine: diffusers" in plan.stdout
    # debug/tiny-sd: 0.05 s a 512x512 step, 4 steps; cpu.small costs 0.5 CNY an hour.
    assert "per image (default size and steps): about 0.2 s, 0.03 CNY per 1000 images" in plan.stdout
    # StableDiffusion-V2.1: 0.1 s a step, 20 steps.
    assert "per image (default size and steps): about 2 s, 0.28 CNY per 1000 images" in plan.stdout
    for override, where, words in (
        ("+deployments.draw.engine=vllm", "deployments.draw.engine", "served by engine diffusers"),
        ("+deployments.draw.engine=embedded", "deployments.draw.engine", "served by engine diffusers"),
        ("+evaluations.e={model: painter, dataset: prompts}", "evaluations.e.model", "text-to-image model"),
    ):
        bad = cli("plan", override, cwd=stack)
        assert (
            bad.returncode != 0 and where in bad.stdout + bad.stderr and words in bad.stdout + bad.stderr
        ), bad.stdout + bad.stderr
        assert "Traceback" not in bad.stdout + bad.stderr

    # Image understanding is vLLM's; its CPU build here has no torchvision, which Qwen2-VL needs.
    vl = cli("plan", "+models.vl={base: debug/tiny-qwen2-vl}", "+deployments.see={model: vl}", cwd=stack)
    assert vl.returncode != 0 and "deployments.see.engine" in vl.stdout + vl.stderr
    assert "image understanding on CPU needs torchvision" in vl.stdout + vl.stderr
    embedded = cli("plan", "+models.vl={base: debug/tiny-qwen2-vl}", "+deployments.see={model: vl, engine: embedded}",
                   cwd=stack)  # fmt: skip
    assert "engine embedded reads text only" in embedded.stdout + embedded.stderr

    applied = cli("apply", "--auto-approve", "--wait", cwd=stack, timeout=600)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
    eng = Engine(stack)
    try:
        key = cli("keys", "create", "art-app", "--quiet", cwd=stack).stdout.strip()
        url = gateway_url(eng.executor)
        assert url is not None
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)

        args = {"model": "draw", "prompt": "a lighthouse at dawn", "size": "256x256"}
        extra = {"num_inference_steps": 2, "seed": 7, "style": "cartoon"}
        first = client.images.generate(**args, n=2, response_format="b64_json", extra_body=extra)  # type: ignore[arg-type]
        pngs = [base64.b64decode(d.b64_json or "") for d in first.data or []]
        assert len(pngs) == 2 and all(_size(p) == (256, 256) for p in pngs)
        assert pngs[0] != pngs[1]  # seed + i per image
        assert "cartoon" in (first.data or [])[0].revised_prompt  # type: ignore[operator]
        again = client.images.generate(**args, n=2, response_format="b64_json", extra_body=extra)  # type: ignore[arg-type]
        assert [base64.b64decode(d.b64_json or "") for d in again.data or []] == pngs

        # URLs: served by the gateway, to the same key only; HEIGHTxWIDTH as the manual orders it.
        made = client.images.generate(
            model="draw", prompt="a tall tower", size="360x640", response_format="url",
            extra_body={"num_inference_steps": 2},
        )  # fmt: skip
        link = (made.data or [])[0].url
        assert link is not None and link.startswith(url.removesuffix("/v1") + "/v1/images/files/")
        got = httpx.get(link, headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert _size(got.content) == (640, 360)
        assert httpx.get(link).status_code == 401
        other = cli("keys", "create", "art-app", "--quiet", cwd=stack).stdout.strip()
        assert httpx.get(link, headers={"Authorization": f"Bearer {other}"}).status_code == 404

        # Outside the model's options: 400/500002 naming the parameter; moderation reads the prompt.
        for bad, param in (({"size": "300x300"}, "size"), ({"extra_body": {"num_inference_steps": 51}},
                           "num_inference_steps"), ({"n": 5}, "n")):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as exc:
                client.images.generate(model="draw", prompt="x", **bad)  # type: ignore[arg-type]
            assert exc.value.body["code"] == "500002" and param in exc.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as exc:
            client.images.generate(model="draw", prompt="something forbidden")
        assert exc.value.body["code"] == "600003"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError, match="makes images"):
            client.chat.completions.create(model="draw", messages=[{"role": "user", "content": "hi"}])
        # Each model's own options: StableDiffusion-V2.1 has the manual's sizes (no 256x256), and its
        # defaults (512x512, 20 steps) are what it makes and what is metered.
        with pytest.raises(openai.BadRequestError, match="size must be one of 360x640"):
            client.images.generate(model="sd21-draw", prompt="x", size="256x256")  # type: ignore[arg-type]
        sd = client.images.generate(model="sd21-draw", prompt="a quiet harbour", extra_body={"seed": 1})
        assert _size(base64.b64decode((sd.data or [])[0].b64_json or "")) == (512, 512)
        # Its own images per minute (1): the next is refused as the model's (700007), not charged.
        with pytest.raises(openai.RateLimitError) as model_limited:
            client.images.generate(model="sd21-draw", prompt="again")
        assert model_limited.value.body["code"] == "700007"  # type: ignore[index]
        assert 1 <= int(model_limited.value.response.headers["retry-after"]) <= 60
        # More images than the limit itself: it could never pass, so a bad request, not a wait.
        with pytest.raises(
            openai.BadRequestError, match="n: 2 images is more than the limit of model 'sd21-draw' of 1"
        ):
            client.images.generate(model="sd21-draw", prompt="x", n=2)  # type: ignore[arg-type]

        # 6 images made by this key this minute; ipm 8: a request for 3 more is refused.
        with pytest.raises(openai.RateLimitError) as limited:
            client.images.generate(**args, n=3, extra_body={"num_inference_steps": 1})  # type: ignore[arg-type]
        assert limited.value.body["code"] == "700006"  # type: ignore[index]
        assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60

        time.sleep(1.5)  # the gateway writes usage every 0.5 s
        usage = cli("usage", "--json", cwd=stack)
        total = json.loads(usage.stdout)["total"]
        assert total["images"] == 6 and total["image_sizes"] == {"256x256": 4, "360x640": 1, "512x512": 1}
        assert total["image_steps"] == 5 * 2 + 20
        text = cli("usage", cwd=stack).stdout
        assert "images 6 (256x256 ×4, 360x640 ×1, 512x512 ×1; 30 steps)" in text
        assert "700006 AK_IPM_RATELIMITING: 1" in text and "700007 MODEL_IPM_RATELIMITING: 1" in text

        # Scaled to two instances in place: both serve, the first kept (the other key's quota).
        first = [r.run_id for r in eng.store.runs("deployment/art/draw") if r.status == "running"]
        scaled = cli(
            "apply", "--auto-approve", "--wait", "+deployments.draw.instances=2", cwd=stack, timeout=300
        )
        assert scaled.returncode == 0, scaled.stdout[-3000:] + scaled.stderr[-3000:]
        running = [r.run_id for r in eng.store.runs("deployment/art/draw") if r.status == "running"]
        assert len(running) == 2 and set(first) < set(running)
        client2 = openai.OpenAI(base_url=url, api_key=other, max_retries=0, timeout=120)
        with ThreadPoolExecutor(4) as pool:  # at once: the gateway sends each to the least busy
            list(
                pool.map(
                    lambda _: client2.images.generate(**args, extra_body={"num_inference_steps": 1}), range(4)
                )
            )  # type: ignore[arg-type]
        time.sleep(1.5)
        from zsconf.usage import query_usage

        served = {r.instance for r in query_usage(eng.store, 60, model="draw") if r.images}
        assert {"draw-0", "draw-1"} <= served
    finally:
        from test_plan import stop_all

        stop_all(eng)


UP_STACK = """\
platform: {device: cpu, default_tenant: art}
tenants:
  art: {quotas: {max_cards: 0}}
models:
  painter: {base: debug/tiny-sd}
deployments:
  draw: {model: painter@latest}
service_groups:
  art-app: {services: [draw], keys: 1}
"""


def test_up_prints_an_image_call_that_works_as_pasted(tmp_path: Path) -> None:
    """`zsconf up` on a stack whose first service makes images prints image calls, and they work
    exactly as printed: curl saves the JSON answer, Python writes image.png (the same seed: the
    same picture both ways)."""
    from test_quickstart import Up, paste, snippet

    stack = tmp_path / "quickstart"
    stack.mkdir()
    (stack / "stack.yaml").write_text(UP_STACK)
    up = Up(tmp_path)
    try:
        text = up.wait_ready()
        call = snippet(text)
        assert "/images/generations" in call and "client.images.generate(" in call
        pasted = paste(call, tmp_path)
        assert pasted.returncode == 0, pasted.stderr
        assert pasted.stdout.splitlines() == ["200 image.json", "wrote image.png"]
        png = (tmp_path / "image.png").read_bytes()
        assert _size(png) == (512, 512)  # the model's default size
        answer = json.loads((tmp_path / "image.json").read_text())
        assert base64.b64decode(answer["data"][0]["b64_json"]) == png
    finally:
        up.stop()
    assert up.proc.returncode == 0
