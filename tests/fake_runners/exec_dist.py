"""Fake distributed runner for executor tests (named as such): under torchrun, each rank joins a
gloo group, all-reduces its rank, and rank 0 writes result.json with the sum and world size.
Usage: torchrun ... exec_dist.py WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    if dist.get_rank() == 0:
        workdir = Path(sys.argv[1])
        out = {"world_size": dist.get_world_size(), "rank_sum": t.item()}
        (workdir / "result.json.tmp").write_text(
            json.dumps({"status": "succeeded", "error": None, "outputs": out})
        )
        os.replace(workdir / "result.json.tmp", workdir / "result.json")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
