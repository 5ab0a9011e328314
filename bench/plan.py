"""Plan time and peak memory for generated stacks of 100 / 1,000 / 10,000 resources, with no
changes and with ~10 % of the resources changed (the fine-tunes of every 10th unit get another
epochs value: they, and everything consuming their output, are replaced or updated).

    python bench/plan.py [--sizes 100,1000,10000] [--repeats 3]

For each case it prints:
  cli    - wall time (best of the repeats) and CPU time (user+sys) of `zsconf plan DIR
           --detailed-exitcode` in a fresh process (imports, load, graph, refresh, diff, render:
           end to end), and that process's peak RSS; on a shared machine CPU time is the steadier
           figure;
  first  - Engine.plan() in a fresh process (no imports counted), and peak RSS;
  again  - Engine.plan() again in the same process with nothing changed on disk (the daemon's
           case: the loaded stack and graph come from the cache keyed by file mtimes+sizes).
The state is seeded directly in SQLite as if every resource had been applied (no processes run).
Goals (2 cores): 1,000 resources < 2 s end to end, 10,000 < 15 s, growth close to linear.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from cli import ZSCONF, generate_stack  # noqa: E402

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from zsconf.engine import Engine
eng = Engine(sys.argv[1])
t1 = time.perf_counter()
plan = eng.plan()
t2 = time.perf_counter()
again = eng.plan()
t3 = time.perf_counter()
print(json.dumps({"first": t2 - t1, "again": t3 - t2, "changes": len(plan.actionable()),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def seed_state(stack: Path) -> int:
    """Record every resource of the stack as applied (what a completed apply leaves)."""
    from zsconf.engine import Engine
    from zsconf.state import ResourceRow

    eng = Engine(stack)
    plan = eng.plan()
    rows = []
    for ch in plan.changes:
        kind, _, rest = ch.address.partition("/")
        tenant, _, name = rest.rpartition("/")
        rows.append(ResourceRow(address=ch.address, kind=kind, tenant=tenant or None, name=name,
                                spec=ch.after or {}, content_hash=ch.content_hash, status="applied",
                                dependencies=ch.dependencies))  # fmt: skip
    with eng.store.session() as s:
        s.add_all(rows)
        s.commit()
    eng.close()
    return len(rows)


def change_ten_percent(stack: Path) -> None:
    text = (stack / "stack.yaml").read_text()
    out, unit = [], 0
    for line in text.splitlines():
        if line.startswith("  ft-"):
            unit = int(line[5:].rstrip(":"))
        if "hyperparameters: {epochs: 2" in line and unit % 10 == 0:
            line = line.replace("epochs: 2", "epochs: 3")
        out.append(line)
    (stack / "stack.yaml").write_text("\n".join(out) + "\n")


def measure(stack: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "ZSCONF_STATE_URL": ""}
    env.pop("ZSCONF_STATE_URL")
    cli, cpu, rss = [], [], []
    for _ in range(repeats):
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        before, cpu0 = ru.ru_maxrss, ru.ru_utime + ru.ru_stime
        t = time.perf_counter()
        proc = subprocess.run(
            [*ZSCONF, "plan", str(stack), "--detailed-exitcode"], capture_output=True, text=True, env=env
        )
        cli.append(time.perf_counter() - t)
        if proc.returncode not in (0, 2):
            sys.stderr.write(proc.stderr[-2000:])
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(ru.ru_utime + ru.ru_stime - cpu0)
        rss.append(max(before, ru.ru_maxrss) / 1024)
    child = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(stack)], capture_output=True,
                                      text=True, env=env, check=True).stdout)  # fmt: skip
    return {"cli": min(cli), "cli_cpu": min(cpu), "cli_rss": max(rss), **child}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'resources':>9} {'case':<11} {'cli s':>7} {'first s':>8} {'again s':>8} {'changes':>8} {'peak MB':>8}"
    )
    with tempfile.TemporaryDirectory(prefix="zsconf-bench-plan-") as tmp:
        for size in (int(s) for s in args.sizes.split(",") if s):
            stack = generate_stack(Path(tmp) / f"s{size}", size)
            n = seed_state(stack)
            for case in ("no changes", "10% changed"):
                if case == "10% changed":
                    change_ten_percent(stack)
                m = measure(stack, args.repeats)
                print(f"{n:>9} {case:<11} {m['cli']:>7.2f} {m['cli_cpu']:>8.2f} {m['first']:>8.2f} {m['again']:>8.3f} "
                      f"{m['changes']:>8} {max(m['cli_rss'], m['maxrss_mb']):>8.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
