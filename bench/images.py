"""Text-to-image serving: what the gateway and the image server add to the pipeline's own time.

    python bench/images.py [--sizes 256x256,512x512] [--steps 4] [--concurrency 1,4] [--images 4]
                           [--rounds 5] [--threads 1] [--workdir DIR] [--json OUT]

Builds debug/tiny-sd here (runners.debug_models, random weights: never downloaded), then for each
size (HEIGHTxWIDTH) measures images per second three ways, each making the same images (one per
request, `--steps` denoising steps, seeds 0, 1, ...):

- in-process: `StableDiffusionPipeline.from_pretrained` called in this process, one image after
  another, PNG-encoded as the server encodes it (the floor: what any server has to pay);
- server: `python -m runners.serve` with engine diffusers, as zsconf starts it, called directly;
- gateway: the same server behind `python -m runners.gateway` (a real key, limits and metering on),
  base64 answers relayed to the client.

Each through-HTTP way runs a closed loop of c clients (aiohttp) until `--images` images are made.
The server makes one image at a time (the pipeline is not thread-safe), so c > 1 measures queueing
behind one worker, not parallel generation. Both the pipeline here and the server get `--threads`
torch threads (default 1, what zsconf's local executor gives a CPU process on a 2-core machine).
The three ways take turns, `--rounds` times, and the median of the rounds is printed: on a shared
machine the speed drifts by tens of percent from minute to minute, so figures taken one way after
another compare the minutes, not the ways.

Goal (issue 17, printed beside the figures, not asserted): the gateway and server add under 5 % to
the pipeline's own time per image; the overhead is printed from the medians and from the best
round of each way (the least disturbed). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _build(workdir: Path) -> tuple[Path, dict[str, Any]]:
    from runners.debug_models import build_debug_model
    from zsconf.catalog import load_catalog

    entry = load_catalog().model("debug/tiny-sd").model_dump(mode="json")
    out = workdir / "tiny-sd"
    if not (out / "model_index.json").exists():
        build_debug_model({"name": "debug/tiny-sd", **entry}, out)
    return out, entry["images"]


class _Pipeline:
    """The pipeline called in this process, as the server calls it (plus PNG encoding)."""

    def __init__(self, model: Path, threads: int) -> None:
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as df_logging

        df_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.pipe = StableDiffusionPipeline.from_pretrained(str(model))
        self.pipe.set_progress_bar_config(disable=True)

    def per_image(self, size: str, steps: int, n: int) -> float:
        """Seconds per image over n images (seeds 0, 1, ...), after one untimed image, as the HTTP
        ways warm up (the other processes just ran: caches are cold)."""
        import io

        from schemas.catalog import parse_size

        height, width = parse_size(size)

        def one(seed: int) -> None:
            gen = self.torch.Generator("cpu").manual_seed(seed)
            image = self.pipe("a lighthouse at dawn", height=height, width=width, num_inference_steps=steps,
                              generator=gen).images[0]  # fmt: skip
            image.save(io.BytesIO(), format="PNG")

        one(10_000)
        start = time.perf_counter()
        for seed in range(n):
            one(seed)
        return (time.perf_counter() - start) / n


async def _loop(url: str, key: str, model: str, size: str, steps: int, n: int, c: int) -> float:
    """Seconds per image over HTTP: c clients in a closed loop until n images are made."""
    import aiohttp

    body = {"model": model, "prompt": "a lighthouse at dawn", "size": size, "num_inference_steps": steps}
    headers = {"Authorization": f"Bearer {key}"}
    seeds = iter(range(n))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def client() -> None:
            for seed in seeds:
                async with session.post(f"{url}/images/generations", json={**body, "seed": seed},
                                        headers=headers) as resp:  # fmt: skip
                    data = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status}: {data[:300]!r}")

        async with session.post(f"{url}/images/generations", json={**body, "seed": 10_000},
                                headers=headers) as resp:  # fmt: skip
            await resp.read()  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(c)))
        return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256x256,512x512")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--images", type=int, default=4, help="images per way in each round")
    ap.add_argument("--rounds", type=int, default=5, help="turns each way takes (the median is printed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zsconf-bench-images-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model, options = _build(workdir)

    from gateway_harness import GatewayEnv

    from runners.serve.process import ServeProcess

    key = "bench-internal-key"
    server = ServeProcess(
        {"run_id": "r-bench", "address": "deployment/bench/draw", "model_dir": str(model),
         "served_model_name": "draw", "port": 0, "workdir": str(workdir / "serve"), "engine": "diffusers",
         "device": "cpu", "api_key": key, "images": {**options, "sizes": sorted({*options["sizes"], *sizes})}},
        workdir / "serve.json", workdir / "serve.log", env={"OMP_NUM_THREADS": str(args.threads)},
    )  # fmt: skip
    env = GatewayEnv(workdir / "gw")
    env.config.update(upstream_api_key=key)
    env.config["deployments"] = [{"tenant": "bench", "name": "draw", "task": "text-to-image",
                                  "images": {**options, "sizes": sorted({*options["sizes"], *sizes})},
                                  "instances": [{"id": "draw-0", "url": f"{server.url}/v1"}]}]  # fmt: skip
    env.config["groups"] = [{"tenant": "bench", "name": "g", "services": ["draw"],
                             "per_key": {"rpm": 100000, "ipm": 100000}}]  # fmt: skip
    secret, _ = env.add_key("bench", "g")
    env.start()
    rows = []
    try:
        pipeline = _Pipeline(model, args.threads)
        for size in sizes:
            for c in concurrency:
                runs: dict[str, list[float]] = {"in_process_s": [], "server_s": [], "gateway_s": []}
                for _ in range(args.rounds):  # the ways take turns
                    runs["in_process_s"].append(pipeline.per_image(size, args.steps, args.images))
                    runs["server_s"].append(asyncio.run(
                        _loop(f"{server.url}/v1", key, "draw", size, args.steps, args.images, c)))  # fmt: skip
                    runs["gateway_s"].append(
                        asyncio.run(_loop(env.url, secret, "draw", size, args.steps, args.images, c)))  # fmt: skip
                row: dict[str, Any] = {
                    "size": size,
                    "c": c,
                    **{k: statistics.median(v) for k, v in runs.items()},
                }
                row["overhead"] = row["gateway_s"] / row["in_process_s"] - 1
                row["overhead_best"] = min(runs["gateway_s"]) / min(runs["in_process_s"]) - 1
                row["spread"] = {k: [round(min(v), 4), round(max(v), 4)] for k, v in runs.items()}
                rows.append(row)
    finally:
        env.close()
        server.stop()
    print(f"debug/tiny-sd, {args.steps} steps, median of {args.rounds} rounds of {args.images} images, "
          f"{args.threads} torch thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        f"{'size':>9} {'c':>2} | {'in-process':>19} | {'server':>19} | {'gateway':>19} | overhead (median; best)"
    )
    for r in rows:
        cells = [
            f"{1 / r[k]:6.2f} img/s {r[k] * 1000:4.0f} ms" for k in ("in_process_s", "server_s", "gateway_s")
        ]
        goal = "ok" if r["overhead"] < 0.05 else "over 5 %"
        print(f"{r['size']:>9} {r['c']:>2} | " + " | ".join(cells)
              + f" | {r['overhead']:+.1%} ({goal}); {r['overhead_best']:+.1%}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
