"""What the Ray executor adds to starting work, against the local executor.

    python bench/ray.py [--address HOST:PORT] [--samples 10] [--jobs 100] [--nodes 2]

Without `--address` it starts a real cluster on this machine (`ray.cluster_utils.Cluster`: a head
that takes no work and `--nodes` worker nodes of 8 CPUs each) and shuts it down at the end.
Measures, with real processes (a job that sleeps 0.2 s; a server answering GET /health):

- submit -> running, per job: `submit` returns once the process runs (Ray: once the node actor
  holds the resources and has started it), local vs ray, p50 / p90 over `--samples`;
- start -> healthy, per server instance: `start_instance` + `wait_healthy`, local vs ray;
- `--jobs` jobs submitted at once (1 CPU each, so the cluster's CPUs queue them): wall time until
  all have succeeded, none lost, and the time per job at a quarter of `--jobs` and at `--jobs`
  (linear when the two agree); once as submitted (each submit starts its job), once queued behind
  a job holding every CPU and released together (one scheduling pass launches every actor that
  fits before waiting for any).

Goal (issue 16): under 1 s added per job, linear in the number of jobs. Not a test: it prints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # not bench/: this file's name would shadow the ray package

from zsconf.executors import InstanceRequest, JobRequest  # noqa: E402
from zsconf.executors.local import LocalExecutor  # noqa: E402
from zsconf.executors.ray_cluster import RayExecutor  # noqa: E402

JOB = """\
import json, os, sys, time
time.sleep(float(sys.argv[2]))
with open(os.path.join(sys.argv[1], "result.json"), "w") as f:
    json.dump({"status": "succeeded", "outputs": {}}, f)
"""

SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer((os.environ["ZSCONF_HOST"], int(os.environ["ZSCONF_PORT"])), H).serve_forever()
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def job(root: Path, run_id: str, sleep: float) -> JobRequest:
    wd = root / "runs" / run_id
    wd.mkdir(parents=True, exist_ok=True)
    return JobRequest(run_id=run_id, address=f"finetune/bench/{run_id}", spec_path="", workdir=str(wd),
                      argv=[sys.executable, str(root / "job.py"), str(wd), str(sleep)], cpus=1)  # fmt: skip


def wait_all(ex: Any, ids: list[str], timeout: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = ex.observe_many(ids)
        if all(o.finished for o in obs.values()):
            return {k: o.state for k, o in obs.items()}
        time.sleep(0.1)
    raise SystemExit(f"jobs did not finish within {timeout} s")


def submit_to_running(ex: Any, root: Path, name: str, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        t = time.perf_counter()
        sub = ex.submit(job(root, f"{name}-lat-{i}", 0.2))
        out.append(time.perf_counter() - t)
        assert sub.state == "running", sub
        wait_all(ex, [sub.run_id])
    return out


def start_to_healthy(ex: Any, root: Path, name: str, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        wd = root / "inst" / name / str(i)
        wd.mkdir(parents=True, exist_ok=True)
        req = InstanceRequest(deployment="deployment/bench/srv", index=0, workdir=str(wd),
                              argv=[sys.executable, str(root / "server.py")], cpus=1)  # fmt: skip
        t = time.perf_counter()
        h = ex.start_instance(req)
        assert ex.wait_healthy(h, timeout_s=60), "server did not become healthy"
        out.append(time.perf_counter() - t)
        ex.stop_instance(h, grace_s=2)
    return out


def burst(ex: Any, root: Path, n: int, tag: str, released: bool = False) -> tuple[float, dict[str, int]]:
    """`n` jobs submitted one after another; `released`: submitted while a job holds every node's
    CPUs (so they queue), the clock starting when it is cancelled and one pass starts them."""
    ids = [f"{tag}-{i}" for i in range(n)]
    if released:
        nodes = ex.capacity().nodes
        blocker = JobRequest(**{**job(root, f"{tag}-blocker", 600).as_dict(), "cpus": 8, "nodes": nodes})
        deadline = time.monotonic() + 60  # Ray's view of free CPUs lags the last jobs' ends
        while ex.submit(blocker).state != "running":
            if time.monotonic() > deadline:
                raise SystemExit("the blocking job never started")
            time.sleep(0.5)
    t = time.perf_counter()
    for i in ids:
        ex.submit(job(root, i, 0.2))
    if released:
        t = time.perf_counter()
        ex.cancel(blocker.run_id, grace_s=1)
    states = wait_all(ex, ids)
    wall = time.perf_counter() - t
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    return wall, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", help="an existing Ray cluster (default: start one here)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=2)
    args = ap.parse_args()
    cluster = None
    if args.address is None:
        from ray.cluster_utils import Cluster

        t = time.perf_counter()
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20}
        )
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=8, object_store_memory=80 * 2**20)
        cluster.wait_for_nodes()
        args.address = cluster.address
        print(f"cluster: head + {args.nodes} nodes of 8 CPUs up in {time.perf_counter() - t:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "job.py").write_text(JOB)
            (root / "server.py").write_text(SERVER)
            local = LocalExecutor(root / "local")
            ray_ex = RayExecutor(root / "ray", address=args.address, namespace="bench")
            t = time.perf_counter()
            ray_ex.capacity()
            print(f"connect to the cluster: {time.perf_counter() - t:.2f} s (once per process)")
            print(f"\nsubmit -> running, per job ({args.samples} samples), p50 / p90:")
            lo = submit_to_running(local, root, "local", args.samples)
            ra = submit_to_running(ray_ex, root, "ray", args.samples)
            print(f"  local  {statistics.median(lo) * 1000:7.0f} / {pct(lo, 0.9) * 1000:.0f} ms")
            print(f"  ray    {statistics.median(ra) * 1000:7.0f} / {pct(ra, 0.9) * 1000:.0f} ms")
            print(
                f"  added by ray: {(statistics.median(ra) - statistics.median(lo)) * 1000:.0f} ms per job (p50)"
            )
            print(f"\nstart -> healthy, per server instance ({args.samples} samples), p50 / p90:")
            li = start_to_healthy(local, root, "local", args.samples)
            ri = start_to_healthy(ray_ex, root, "ray", args.samples)
            print(f"  local  {statistics.median(li) * 1000:7.0f} / {pct(li, 0.9) * 1000:.0f} ms")
            print(f"  ray    {statistics.median(ri) * 1000:7.0f} / {pct(ri, 0.9) * 1000:.0f} ms")
            cpus = ray_ex.capacity().detail
            print(f"\n{args.jobs} jobs of 0.2 s, 1 CPU each, submitted at once ({cpus}):")
            for released in (False, True):
                how = (
                    "queued behind a job holding every CPU, then released"
                    if released
                    else "each submit starts it"
                )
                print(f"  {how}:")
                for n in (max(1, args.jobs // 4), args.jobs):
                    wall, counts = burst(ray_ex, root, n, f"burst{n}{'r' if released else ''}", released)
                    print(
                        f"    {n:4d} jobs: {wall:6.1f} s wall, {wall / n * 1000:5.0f} ms per job, states {counts}"
                    )
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    main()
