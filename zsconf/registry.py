"""The runners zsconf starts, as a typed registry (torchtune's `_recipe_registry.py`): which module
does each kind of work, whether it runs distributed (under torchrun when it needs more than one
process), and which engine environment it needs. The engine builds every runner's argv here and
hands it to the executor, which runs the argv it is given and imports no runner: the seam engine
environments and other executors plug into.

Called by the engine (apply, job restarts, the gateway, weight validation, debug bases).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

__all__ = ["REGISTRY", "Runner", "runner", "runner_argv", "torchrun_argv", "torchrun_node_argv"]


@dataclass(frozen=True)
class Runner:
    """One runner: `python -m <module> SPEC.json`."""

    name: str
    module: str
    # Launched under torchrun (one process per card, and per node) when it needs more than one
    # process, or when DeepSpeed asks for a distributed environment even on one card.
    distributed: bool = False
    # The engine environment whose interpreter runs it ("default": the one zsconf runs in).
    environment: str = "default"


# Kind of work -> runner. Resource kinds for jobs and deployments; the platform's own processes
# and steps by name.
REGISTRY: dict[str, Runner] = {
    "finetune": Runner("train", "runners.train", distributed=True),
    "compression": Runner("compress", "runners.compress"),
    "evaluation": Runner("evaluate", "runners.evaluate"),
    "deployment": Runner("serve", "runners.serve"),
    "gateway": Runner("gateway", "runners.gateway"),
    "validate": Runner("validate", "runners.validate"),
    "debug_model": Runner("debug_models", "runners.debug_models"),
}


def runner(kind: str) -> Runner:
    """The runner of `kind`. Test-only override of its module: ZSCONF_RUNNER_MODULE_<KIND> (upper
    case), e.g. ZSCONF_RUNNER_MODULE_FINETUNE=tests.fake_runners.job."""
    found = REGISTRY[kind]
    module = os.environ.get(f"ZSCONF_RUNNER_MODULE_{kind.upper()}")
    return replace(found, module=module) if module else found


def _python(r: Runner) -> str:
    return sys.executable  # every runner runs in zsconf's own environment for now


def runner_argv(
    r: Runner,
    spec_path: str,
    *,
    processes: int = 1,
    nodes: int = 1,
    deepspeed: bool = False,
    node_rank: int | None = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> list[str]:
    """argv that runs `r` on `spec_path`. `processes` per node (cards; 0 or 1 = one process).

    A distributed runner with more than one process, or with DeepSpeed, starts under torchrun. On
    one node torchrun picks its own free rendezvous port (`--standalone`), so an argv made when a
    job is queued stays good when it starts. Across nodes the platform's PET_* variables fill
    what is not given (`node_rank`/`master_*` None), read by the shell at launch (REFERENCE.md)."""
    target = ["-m", r.module, spec_path]
    per_node = max(processes, 1)
    if not r.distributed or (per_node == 1 and nodes == 1 and not deepspeed):
        return [_python(r), *target]
    if nodes == 1:
        return torchrun_argv(per_node, target, python=_python(r))
    return torchrun_node_argv(
        _python(r), per_node, nodes, node_rank if node_rank is not None else "$PET_NODE_RANK",
        master_addr or "$PET_MASTER_ADDR", master_port or "$PET_MASTER_PORT", target,
    )  # fmt: skip


def torchrun_node_argv(
    python: str, per_node: int, nodes: int, node_rank: int | str, master_addr: str, master_port: int | str,
    target: list[str],
) -> list[str]:  # fmt: skip
    """torchrun for one node of a `nodes`-node process group (static rendezvous at the master)."""
    return [
        python, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}", f"--nnodes={nodes}",
        f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}", *target,
    ]  # fmt: skip


def torchrun_argv(nproc: int, target: list[str], python: str = sys.executable) -> list[str]:
    """torchrun on this host: `nproc` processes of `target` (["-m", module, ...] or [script, ...])."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target]
