"""Training on a real 3-node Ray cluster (conftest.RayCluster) with the real runner (runners.train,
debug Qwen2): a 2-node LoRA fine-tune (gloo on CPU, one process per node) ends with the weights of
the same run as 2 processes on one host; a node lost mid-run leaves the run `lost`, and the next
attempt (what the engine starts: a new run id with `resume: true`, in the same run folder) resumes
on the surviving node from the checkpoint and ends with the weights of a run never interrupted."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import test_executor_ray
from test_executor_ray import wait_done
from test_train_resume import _weights
from train_helpers import REPO, env, result, spec, write_alpaca

from zsconf.executors import JobRequest
from zsconf.executors.ray_cluster import RayExecutor
from zsconf.registry import REGISTRY, runner_argv

ex = test_executor_ray.ex  # fixture: a RayExecutor on the module's cluster, its runs stopped after

HP = {"iterations": 12, "checkpoints": 3, "learning_rate": 2e-3, "global_batch_size": 4, "micro_batch_size": 1,
      "lr_scheduler": "cosine", "warmup_ratio": 0.2}  # fmt: skip


def _same_weights(a: Path, b: Path, base: Path) -> None:
    import torch

    out_a, out_b = result(a)["outputs"], result(b)["outputs"]
    wa, wb = _weights(Path(out_a["model_dir"])), _weights(Path(out_b["model_dir"]))
    assert wa.keys() == wb.keys()
    before = _weights(base)
    assert [k for k in wa if k in before and not torch.equal(wa[k], before[k])], "training changed nothing"
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def _job(path: Path, run_id: str, nodes: int, processes: int) -> JobRequest:
    workdir = json.loads(path.read_text())["workdir"]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    argv = runner_argv(REGISTRY["finetune"], str(path), processes=processes)  # as the engine builds it
    return JobRequest(run_id=run_id, address="finetune/acme/ft", spec_path=str(path), workdir=workdir,
                      module="runners.train", argv=argv, nodes=nodes, cpus=2, memory_gb=4)  # fmt: skip


@pytest.mark.slow
def test_two_node_lora_equals_two_processes_on_one_host(
    ex: RayExecutor, tiny_qwen2: Path, tmp_path: Path
) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 8)
    one, two = tmp_path / "one-host", tmp_path / "two-nodes"
    one.mkdir()
    two.mkdir()
    local = subprocess.run(runner_argv(REGISTRY["finetune"], str(spec(one, tiny_qwen2, data, **HP)), processes=2),
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    ex.submit(_job(spec(two, tiny_qwen2, data, **HP), "r-2n", nodes=2, processes=2))
    obs = wait_done(ex, "r-2n", timeout=300)
    assert obs.state == "succeeded", (two / "work" / "runner.log").read_text()[-3000:]
    placement = ex._load("r-2n")["handle"]["placement"]
    assert len(set(placement["nodes"])) == 2  # one process per node: the group spans both
    assert (two / "work" / "ranks" / "1" / "runner.log").is_file()  # rank 1 ran on the other node
    _same_weights(one, two, tiny_qwen2)


@pytest.mark.slow
def test_node_lost_mid_run_then_resumed_on_another_node(
    ex: RayExecutor, ray_cluster: Any, tiny_qwen2: Path, tmp_path: Path
) -> None:
    data = write_alpaca(tmp_path / "qa.jsonl", 8)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    # Long enough that the node goes mid-run (a worker notices its raylet died within seconds).
    hp = {**HP, "iterations": 120, "checkpoints": 10}  # a checkpoint every 12 steps
    ex.submit(_job(spec(whole, tiny_qwen2, data, **hp), "r-whole", nodes=1, processes=1))
    path = spec(cut, tiny_qwen2, data, **hp)
    sub = ex.submit(_job(path, "r-cut-1", nodes=1, processes=1))
    assert sub.state == "running" and sub.handle is not None  # room even if Ray's view lags
    first = cut / "work" / "checkpoints" / "step-12"
    deadline = time.monotonic() + 180
    while not first.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.is_dir(), "no checkpoint before the deadline"
    node = sub.handle.placement["nodes"][0]
    ray_cluster.remove_node(next(n for n in ray_cluster.nodes if n.node_id == node))
    try:
        lost = wait_done(ex, "r-cut-1", timeout=300)
        assert lost.state == "lost" and not (cut / "work" / "result.json").exists()
        body = json.loads(path.read_text())
        body.update(run_id="r-cut-2", resume=True)
        path.write_text(json.dumps(body))
        again = ex.submit(_job(path, "r-cut-2", nodes=1, processes=1))
        obs = wait_done(ex, "r-cut-2", timeout=300)
        assert obs.state == "succeeded", (cut / "work" / "runner.log").read_text()[-3000:]
        assert ex._load("r-cut-2")["handle"]["placement"]["nodes"] != [node]
        assert '"resumed"' in (cut / "work" / "events.jsonl").read_text()
        assert again.run_id == "r-cut-2"
        assert wait_done(ex, "r-whole", timeout=300).state == "succeeded"
        _same_weights(whole, cut, tiny_qwen2)
    finally:
        ray_cluster.add_node("node-extra")
