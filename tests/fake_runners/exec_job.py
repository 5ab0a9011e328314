"""Fake runner for executor tests (named as such): `exec_job.py WORKDIR MODE [SECONDS]`.

MODE: ok (result succeeded, exit 0), fail (result failed, exit 1), crash (exit 3, no result),
sleep (sleep SECONDS then ok), env (write the visible-devices variables into result outputs),
group (start a grandchild in the same process group, then sleep: cancel must kill both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _result(workdir: Path, status: str, outputs: dict) -> None:
    tmp = workdir / "result.json.tmp"
    tmp.write_text(
        json.dumps({"status": status, "error": None if status == "succeeded" else "x", "outputs": outputs})
    )
    os.replace(tmp, workdir / "result.json")


def main() -> int:
    workdir, mode = Path(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    print(f"exec_job {mode} pid={os.getpid()}", flush=True)
    if mode == "fail":
        _result(workdir, "failed", {})
        return 1
    if mode == "crash":
        return 3
    if mode == "group":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (workdir / "grandchild.pid").write_text(str(child.pid))
    if mode in ("sleep", "group"):
        time.sleep(seconds)
    outputs = {
        k: os.environ.get(k)
        for k in ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ZSCONF_RUN_ID", "ZSCONF_PORT")
    }
    _result(workdir, "succeeded", outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
