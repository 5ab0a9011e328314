"""The gateway in front of the real embedded engine (`runners.serve` with the tiny Qwen2 fixture),
called with the openai SDK: non-streaming, streaming with include_usage, and the usage record."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_harness import GatewayEnv, Proc


@pytest.mark.slow
def test_gateway_over_embedded_engine(tmp_path: Path, tiny_qwen2: Path) -> None:
    spec = {
        "run_id": "r-gw",
        "address": "deployment/acme/tiny",
        "model_dir": str(tiny_qwen2),
        "served_model_name": "tiny",
        "port": 0,
        "device": "cpu",
        "api_key": "sk-internal",
        "workdir": str(tmp_path / "serve"),
    }
    (tmp_path / "serve.json").write_text(json.dumps(spec))
    server = Proc([sys.executable, "-m", "runners.serve", str(tmp_path / "serve.json")], timeout=120)
    env = GatewayEnv(tmp_path / "gw")
    try:
        env.config = {
            "version": 1,
            "upstream_api_key": "sk-internal",
            "deployments": [
                {
                    "tenant": "acme",
                    "name": "tiny",
                    "instances": [{"id": "tiny-0", "url": f"http://127.0.0.1:{server.port}/v1"}],
                }
            ],
            "groups": [{"tenant": "acme", "name": "g", "services": ["tiny"]}],
        }
        secret, key_id = env.add_key("acme", "g")
        env.start(usage_flush_s=0.2)
        client = openai.OpenAI(base_url=env.url, api_key=secret, max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "hello"}]
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, seed=0)
        assert r.usage.completion_tokens >= 1 and r.choices[0].message.content is not None
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=msgs, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        deadline = time.time() + 5
        while time.time() < deadline and len([u for u in env.usage() if u.key_id == key_id]) < 2:
            time.sleep(0.1)
        recs = [u for u in env.usage() if u.key_id == key_id]
        assert [(u.status, u.stream) for u in recs] == [(200, False), (200, True)]
        assert recs[0].completion_tokens == r.usage.completion_tokens
        assert recs[1].completion_tokens == chunks[-1].usage.completion_tokens
    finally:
        env.close()
        server.stop()
