"""Fake model server (tests only): records its start, then runs until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    starts = os.environ.get("FAKE_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{spec['run_id']} {os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (Path(spec["workdir"]) / "ready").write_text(os.environ.get("ZSCONF_PORT", ""))
    while True:
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
