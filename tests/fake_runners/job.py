"""Fake job runner (tests only): see the package docstring."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    starts = os.environ.get("FAKE_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{spec['run_id']} {os.getpid()}\n")
    with open(workdir / "events.jsonl", "a") as f:
        f.write(json.dumps({"ts": time.time(), "event": "started", "message": spec["address"]}) + "\n")
    steps = 4
    for step in range(steps):
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")) / steps)
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": 1.0 / (step + 1)}) + "\n")
    if os.environ.get("FAKE_CRASH") == "1":
        return 3
    if os.environ.get("FAKE_FAIL") == "1":
        _atomic(workdir / "result.json", {"status": "failed", "error": "fake failure", "outputs": {}})
        return 1
    outputs: dict = {}
    if spec.get("output_dir"):
        out = Path(spec["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(
            json.dumps({"model_type": "qwen2", "fake": True, "input": spec["inputs"].get("model_dir")})
        )
        outputs["model_dir"] = str(out)
    else:
        outputs["metrics"] = {"accuracy": 0.5}
    # FAKE_GATE_FAIL_VERSION=N: an evaluation of model version N fails its quality gate.
    if str(spec["inputs"].get("model_version")) == os.environ.get("FAKE_GATE_FAIL_VERSION"):
        outputs["gate"] = {"passed": False, "failures": ["rouge_l 0.1000 < 0.3"]}
    _atomic(workdir / "result.json", {"status": "succeeded", "error": None, "outputs": outputs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
