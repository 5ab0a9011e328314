"""Fake checkpointing job runner (tests only, for job control: tests/test_jobs.py).

Honours the runner protocol (CONTRACTS.md section 2) and `"resume": true`: it continues from the
highest `checkpoints/checkpoint-N` in its workdir. Knobs (env): CKPT_STEPS (default 4),
CKPT_STEP_S seconds per step (default 0.05), CKPT_MODE = ok | crash_first (exit 137 after step 2
of the first attempt, as a SIGKILL'd process would) | fail (exit 1 with a failed result at once,
writing no checkpoint), CKPT_STARTS=FILE (each start appends "run_id resume_step").
"""

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
    ckdir = workdir / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    start = 0
    if spec.get("resume"):
        steps = [int(d.name.rsplit("-", 1)[1]) for d in ckdir.glob("checkpoint-*")]
        start = max(steps, default=0)
    if os.environ.get("CKPT_STARTS"):
        with open(os.environ["CKPT_STARTS"], "a") as f:
            f.write(f"{spec['run_id']} {start}\n")
    mode = os.environ.get("CKPT_MODE", "ok")
    if mode == "fail":
        _atomic(workdir / "result.json", {"status": "failed", "error": "fake data error", "outputs": {}})
        return 1
    total = int(os.environ.get("CKPT_STEPS", "4"))
    for step in range(start + 1, total + 1):
        time.sleep(float(os.environ.get("CKPT_STEP_S", "0.05")))
        (ckdir / f"checkpoint-{step}").mkdir(exist_ok=True)
        (ckdir / f"checkpoint-{step}" / "state.json").write_text(json.dumps({"step": step}))
        if mode == "crash_first" and step == 2 and not spec.get("resume"):
            return 137
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2", "fake": True, "steps": total}))
    _atomic(
        workdir / "result.json", {"status": "succeeded", "error": None, "outputs": {"model_dir": str(out)}}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
