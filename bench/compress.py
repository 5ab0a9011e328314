"""Compression figures for every strategy on the debug models (CPU): wall time, oneshot time, size
ratio, held-out perplexity before and after.

Run: `python bench/compress.py [--strategies a,b] [--samples 32]`. Builds the tiny debug models in a
temporary folder (offline), calls `runners.compress.run.compress` in-process (the runner process
adds only its start-up), prints one line per (model, strategy). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STRATEGIES = [
    "smoothquant-w8a8",
    "awq-w4a16",
    "gptq-w4a16",
    "gptq-w8a8",
    "fp8-dynamic",
    "W8A8C8",
    "W8A16",
    "W4A8",
]
DIMS = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 2048,
    "seed": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=128)
    args = parser.parse_args()

    import contextlib
    import io

    from loguru import logger

    from runners.compress.run import compress

    logger.disable("llmcompressor")  # its per-module log lines would bury the table
    from runners.debug_models import build_debug_model
    from runners.runfiles import RunFiles
    from schemas.run_compress import CompressRunSpec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(
            f"{'model':<8} {'strategy':<18} {'wall s':>7} {'oneshot s':>9} {'MB before':>9} {'MB after':>8} "
            f"{'ratio':>6} {'ppl before':>10} {'ppl after':>10} {'Δppl':>8}"
        )
        for arch in ("llama", "qwen2"):
            base = build_debug_model({"architecture": arch, "debug": DIMS}, root / f"base-{arch}")
            for strategy in args.strategies.split(","):
                work = root / f"{arch}-{strategy}"
                run = CompressRunSpec.model_validate(
                    {
                        "run_id": "r-bench",
                        "address": f"compression/bench/{strategy}",
                        "workdir": str(work / "work"),
                        "output_dir": str(work / "out"),
                        "spec": {
                            "description": "bench",
                            "model": "base",
                            "strategy": strategy,
                            "output": {"model": "out", "description": "bench"},
                            "calibration": {"samples": args.samples, "sequence_length": args.sequence_length},
                        },
                        "inputs": {"model_dir": str(base)},
                    }
                )
                t0 = time.monotonic()
                with contextlib.redirect_stdout(io.StringIO()):  # the runner's event lines
                    out = compress(run, RunFiles(run.workdir))
                wall = time.monotonic() - t0
                print(
                    f"{arch:<8} {strategy:<18} {wall:7.2f} {out['oneshot_seconds']:9.2f} "
                    f"{out['size_bytes_before'] / 1e6:9.3f} {out['size_bytes_after'] / 1e6:8.3f} "
                    f"{out['size_ratio']:6.3f} {out['perplexity_before']:10.2f} {out['perplexity_after']:10.2f} "
                    f"{out['perplexity_increase']:+8.2%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
