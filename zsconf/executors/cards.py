"""Which accelerator cards this host has, found cheaply (no torch), and how to hand them out.

Called by `zsconf.executors.local` and `zsconf.executors.host_cards` (the plan's capacity check).
`ZSCONF_HOST_CARDS=npu:8` (or `cuda:4`, `cpu:0`) overrides detection; otherwise Ascend cards are
counted from /dev/davinci<N>, and NVIDIA cards with `nvidia-smi -L` when that tool exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache

from zsconf.errors import ExecutorError

__all__ = ["VISIBLE_ENV", "detect_host_cards", "parse_host_cards"]

# The variable that restricts a process to its assigned cards, per device kind.
VISIBLE_ENV = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}


def parse_host_cards(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\s*(npu|cuda|cpu)\s*:\s*(\d+)\s*", value)
    if not m:
        raise ExecutorError(f"ZSCONF_HOST_CARDS={value!r}: expected DEVICE:COUNT, e.g. npu:8 or cuda:4")
    return m.group(1), int(m.group(2)) if m.group(1) != "cpu" else 0


def detect_host_cards() -> tuple[str, int]:
    """(device, count): ("npu", 8), ("cuda", 4) or ("cpu", 0)."""
    env = os.environ.get("ZSCONF_HOST_CARDS")
    if env:
        return parse_host_cards(env)
    return _detect()


@lru_cache(maxsize=1)
def _detect() -> tuple[str, int]:
    try:
        npus = [d for d in os.listdir("/dev") if re.fullmatch(r"davinci\d+", d)]
    except OSError:
        npus = []
    if npus:
        return "npu", len(npus)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        if n:
            return "cuda", n
    return "cpu", 0
