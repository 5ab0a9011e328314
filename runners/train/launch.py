"""The command line that starts a training run: called by the executor (zsconf/executors).

One process: `python -m runners.train SPEC`; more cards or nodes: torchrun with one process per card.
Multi-node follows the platform's PET_* variables (REFERENCE.md): when master_addr / node_rank are not
given they are read at launch time from $PET_MASTER_ADDR, $PET_NODE_RANK, ... by the shell.
"""

from __future__ import annotations

import sys

__all__ = ["build_command"]


def build_command(
    spec_path: str,
    cards: int = 1,
    nodes: int = 1,
    node_rank: int | None = 0,
    master_addr: str | None = "127.0.0.1",
    master_port: int | None = 29500,
    deepspeed_stage: int | None = None,
) -> list[str]:
    """argv for the run. `cards` = processes per node (0 = CPU, one process). `deepspeed_stage` is
    read by the runner from the spec; it is accepted here so the caller passes the whole resource
    picture, and only forces torchrun (DeepSpeed wants a distributed env even on one card)."""
    per_node = max(cards, 1)
    if per_node == 1 and nodes == 1 and deepspeed_stage is None:
        return [sys.executable, "-m", "runners.train", spec_path]
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}"]
    if nodes > 1:
        argv += [
            f"--nnodes={nodes}",
            f"--node_rank={node_rank if node_rank is not None else '$PET_NODE_RANK'}",
            f"--master_addr={master_addr or '$PET_MASTER_ADDR'}",
            f"--master_port={master_port or '$PET_MASTER_PORT'}",
        ]
    else:
        argv += [
            "--nnodes=1",
            f"--master_addr={master_addr or '127.0.0.1'}",
            f"--master_port={master_port or 29500}",
        ]
    return [*argv, "-m", "runners.train", spec_path]
