"""Embedded model server figures: time to first token, tokens/s alone and under concurrency.

Run: `python bench/serve.py [MODEL_DIR]` (default: builds the debug tiny Qwen2 in a temp folder).
Starts `python -m runners.serve` as a real process and drives it with httpx over loopback. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runners.serve.process import ServeProcess

TOKENS = 64


async def one(client: httpx.AsyncClient, i: int) -> tuple[float, float, int]:
    body = {
        "model": "m",
        "prompt": f"{i} hello",
        "max_tokens": TOKENS,
        "temperature": 1.0,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
        "frequency_penalty": 1.0,
    }
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and not ttft:
                ttft = time.perf_counter() - start
            if '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":')[1].split(",")[0])
    return ttft, time.perf_counter() - start, tokens


async def run(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await one(client, -1)  # warm-up
        for concurrency in (1, 8):
            start = time.perf_counter()
            results = await asyncio.gather(*(one(client, i) for i in range(concurrency)))
            wall = time.perf_counter() - start
            ttfts = [r[0] * 1000 for r in results]
            total = sum(r[2] for r in results)
            print(
                f"concurrency {concurrency}: {total / wall:7.1f} tokens/s aggregate, "
                f"TTFT median {statistics.median(ttfts):7.1f} ms, max {max(ttfts):7.1f} ms, "
                f"{total} tokens in {wall:.2f} s"
            )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            model = Path(sys.argv[1])
        else:
            from runners.debug_models import build_debug_model

            dims = {
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 2048,
                "vocab_size": 2048,
                "seed": 0,
            }
            model = build_debug_model({"architecture": "qwen2", "debug": dims}, Path(tmp) / "tiny")
        spec = {
            "run_id": "bench",
            "address": "deployment/bench/m",
            "model_dir": str(model),
            "served_model_name": "m",
        }
        with ServeProcess(spec, Path(tmp) / "serve.json") as server:
            print(f"model {model.name} on {server.ready['device']}")
            asyncio.run(run(server.url))


if __name__ == "__main__":
    main()
