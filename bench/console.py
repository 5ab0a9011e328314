"""Server time of the web console's pages with 1,000 resources and 1,000,000 usage rows.

    python bench/console.py [--resources 1000] [--usage 1000000] [--requests 30]

Builds a throwaway state store (SQLite, or `--state-url` for PostgreSQL), starts the daemon's
admin server on loopback, signs in like a browser and fetches every page and chart's JSON
`--requests` times. Prints the server's own time per page (its Server-Timing header) at p50 and
p99, then the usage query alone for each range. Goals (issue 15): every page under 100 ms p50;
the usage page's query under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGES = ["overview", "overview?kind=deployment", "resources/finetune/t1/job0", "training", "models", "usage",
         "usage?range=24h", "usage?range=7d", "deployments", "events", "keys", "data/usage?range=1h",
         "data/usage?range=7d", "data/metrics/r-job0"]  # fmt: skip


class View:
    def __init__(self, stack_dir: Path, store: object) -> None:
        self.stack_dir = stack_dir
        self.store = store

    def current_plan(self) -> None:
        return None

    def trigger_sync(self, reason: str) -> None:
        pass

    def is_leader(self) -> bool:
        return True


def build(store: object, root: Path, n_resources: int, n_usage: int) -> None:
    from daemon.status import ResourceStatus, record_statuses
    from zsconf.state import ResourceRow, RunRow

    kinds = ["dataset", "finetune", "compression", "evaluation", "deployment", "service_group"]
    statuses = {}
    for i in range(n_resources):
        kind, tenant = kinds[i % len(kinds)], f"t{i % 10}"
        name = f"{'job' if kind == 'finetune' else kind[:4]}{i // len(kinds)}"
        addr = f"{kind}/{tenant}/{name}"
        store.put_resource(ResourceRow(address=addr, kind=kind, tenant=tenant, name=name,  # type: ignore[attr-defined]
                                       spec={"description": f"resource {i}"}, status="succeeded"))  # fmt: skip
        statuses[addr] = ResourceStatus(addr, "Synced", "Healthy", f"reason {i}", time.time())
        if kind == "finetune" and i < 60:
            work = root / "runs" / f"r-{name}"
            work.mkdir(parents=True, exist_ok=True)
            with open(work / "metrics.jsonl", "w") as f:
                for step in range(1, 2001):
                    f.write(
                        json.dumps({"ts": 0, "step": step, "loss": 5 / step, "tokens_per_s_per_card": 900.0})
                        + "\n"
                    )
            (work / "runner.log").write_text("iteration 2000/2000\n" * 200)
            store.add_run(RunRow(address=addr, run_id=f"r-{name}", status="succeeded", workdir=str(work)))  # type: ignore[attr-defined]
    record_statuses(store, statuses)  # type: ignore[arg-type]
    for i in range(500):
        store.add_event("created", f"event {i}", f"finetune/t0/job{i % 10}")  # type: ignore[attr-defined]

    # Usage: evenly over the last 7 days, oldest first, in batches with their hourly rollup, as the
    # gateway writes them (in time order: the rows of an hour sit together in the table).
    from sqlalchemy import insert

    from zsconf.state import UsageRecord
    from zsconf.state.rollup import add_usage_rows

    now, rng = time.time(), random.Random(0)
    table = UsageRecord.__table__  # type: ignore[attr-defined]
    batch = 50_000
    t0 = time.perf_counter()
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        for start in range(0, n_usage, batch):
            # 200 keys in 20 service groups of 10 tenants; each group calls its own 2 deployments.
            rows = [{"ts": now - 7 * 86400 * (1 - j / n_usage), "tenant": f"t{j % 200 % 20 % 10}",
                     "group": f"g{j % 200 % 20}", "key_id": f"ak-{j % 200:012d}",
                     "model": f"d{j % 200 % 20 * 2 + j // 200 % 2}", "deployment": f"d{j % 200 % 20 * 2 + j // 200 % 2}",
                     "instance": None, "prompt_tokens": 20, "completion_tokens": 40,
                     "latency_ms": rng.lognormvariate(4, 0.6), "ttft_ms": None,
                     "status": 200 if j % 97 else 429, "error_code": None if j % 97 else "700004", "stream": False}
                    for j in range(start, min(n_usage, start + batch))]  # fmt: skip
            conn.execute(insert(table), rows)
            add_usage_rows(conn, rows)  # as the gateway's meter writes them
    print(f"inserted {n_usage:,} usage rows in {time.perf_counter() - t0:.1f} s", flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--usage", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--state-url", default=None, help="PostgreSQL URL (default: SQLite in a temp folder)")
    args = ap.parse_args()

    import httpx

    from daemon.admin import AdminServer, admin_token
    from daemon.console import data
    from zsconf.state import open_store

    root = Path(tempfile.mkdtemp(prefix="zsconf-console-bench-"))
    (root / "stack.yaml").write_text("platform: {device: cpu}\n")
    store = open_store(args.state_url, root)
    build(store, root, args.resources, args.usage)
    server = AdminServer(View(root, store), "127.0.0.1", 0, admin_token(root)).start()
    client = httpx.Client(base_url=server.url, timeout=60)
    assert client.post("/console/login", data={"token": admin_token(root)}).status_code == 303
    print(f"{args.resources:,} resources, {args.usage:,} usage rows, {store.display_url}")
    print(f"{'page':34} {'p50 ms':>8} {'p99 ms':>8} {'bytes':>9}")
    for page in PAGES:
        times, size = [], 0
        for _ in range(args.requests):
            r = client.get(f"/console/{page}")
            assert r.status_code == 200, (page, r.status_code, r.text[:300])
            times.append(float(re.search(r"dur=([\d.]+)", r.headers["server-timing"]).group(1)))  # type: ignore[union-attr]
            size = len(r.content)
        print(f"{page:34} {statistics.median(times):8.1f} {pct(times, 99):8.1f} {size:9,}", flush=True)
    print("usage query alone (daemon.console.data.usage):")
    for rng in data.RANGES:
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            data.usage(store, rng)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  {rng:4} p50 {statistics.median(times):7.1f} ms  p99 {pct(times, 99):7.1f} ms", flush=True)
    server.stop()
    store.close()


if __name__ == "__main__":
    main()
