"""Wall time of the CLI's fast paths: `zsconf --help`, validating the quickstart, and validating
generated stacks of 100 / 1,000 / 10,000 resources (each a real subprocess; median of repeats).

    python bench/cli.py [--repeats 5] [--sizes 100,1000,10000]

Goals on a 2-core machine: --help < 0.3 s, quickstart < 1 s, 1,000 resources < 2 s, growth close
to linear. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The console script, as a user runs it (falls back to -m when not installed).
_SCRIPT = Path(sys.executable).parent / "zsconf"
ZSCONF = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "zsconf.cli.main"]

__all__ = ["generate_stack"]


def generate_stack(directory: Path, resources: int, presets: bool = False) -> Path:
    """A valid stack of `resources` resources over every kind, 9 per "team unit" (dataset, model,
    fine-tune, compression, 2 evaluations, 2 deployments, service group), one tenant per 1,000. Every dataset entry points at one small shared file. With `presets`,
    every fine-tune pulls `finetune/lora` through a defaults entry (so goes through Hydra)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    shutil.copy(REPO / "examples/stacks/quickstart/data/faq.jsonl", directory / "data/faq.jsonl")
    tenants = max(1, resources // 1000)
    units = max(1, (resources - tenants) // 9)
    extra = max(0, resources - tenants - 9 * units)  # padding datasets: exactly `resources` in all
    lines: list[str] = []
    if presets:
        lines.append("defaults:")
        lines += [f"  - finetune/lora@finetunes.ft-{i}" for i in range(units)]
        lines.append("  - _self_")
    lines += ["platform:", "  device: cpu", "tenants:"]
    lines += [f"  team-{t}:\n    quotas: {{max_deployments: 1000}}" for t in range(tenants)]
    sections: dict[str, list[str]] = {k: [] for k in ("datasets", "models", "finetunes", "compressions")}
    sections.update({k: [] for k in ("evaluations", "deployments", "service_groups")})
    for i in range(units):
        t = f"team-{i % tenants}"
        sections["datasets"].append(
            f"  ds-{i}:\n    tenant: {t}\n    path: data/faq.jsonl\n    format: alpaca"
        )
        sections["models"].append(f"  base-{i}:\n    tenant: {t}\n    base: debug/tiny-qwen2")
        sections["finetunes"].append(
            f"  ft-{i}:\n    tenant: {t}\n    model: base-{i}\n    datasets: {{train: ds-{i}}}\n"
            f"    hyperparameters: {{epochs: 2, learning_rate: 2.0e-3, sequence_length: 128}}\n"
            f"    output: {{model: bot-{i}}}"
        )
        sections["compressions"].append(
            f"  cq-{i}:\n    tenant: {t}\n    model: bot-{i}@latest\n    strategy: smoothquant-w8a8\n"
            f"    calibration: {{dataset: ds-{i}, samples: 16}}\n    output: {{model: bot-{i}-w8a8}}"
        )
        for j, model in enumerate((f"bot-{i}@latest", f"bot-{i}-w8a8@latest")):
            sections["evaluations"].append(
                f"  ev-{i}-{j}:\n    tenant: {t}\n    model: {model}\n    dataset: ds-{i}"
            )
            sections["deployments"].append(
                f"  dep-{i}-{j}:\n    tenant: {t}\n    model: {model}\n    engine: embedded\n    qps: 2"
            )
        sections["service_groups"].append(
            f"  sg-{i}:\n    tenant: {t}\n    services: [dep-{i}-0, dep-{i}-1]\n"
            f"    rate_limits: {{per_key: {{rpm: 60}}}}"
        )
    for i in range(extra):
        sections["datasets"].append(
            f"  pad-{i}:\n    path: data/faq.jsonl\n    format: alpaca\n    tenant: team-0"
        )
    for key, body in sections.items():
        lines.append(f"{key}:")
        lines += body
    (directory / "stack.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def _time(argv: list[str], repeats: int) -> tuple[float, int]:
    times: list[float] = []
    rc = 0
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        rc = proc.returncode
        if rc not in (0,):
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return statistics.median(times), rc


def _count(directory: Path) -> int:
    proc = subprocess.run([*ZSCONF, "validate", str(directory), "--json"], capture_output=True, text=True)
    return sum(json.loads(proc.stdout)["resources"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[tuple[str, float, int]] = []
    rows.append(("zsconf --help", *_time([*ZSCONF, "--help"], args.repeats)))
    rows.append(
        (
            "zsconf validate examples/stacks/quickstart",
            *_time([*ZSCONF, "validate", "examples/stacks/quickstart"], args.repeats),
        )
    )
    with tempfile.TemporaryDirectory(prefix="zsconf-bench-") as tmp:
        for size in sizes:
            for presets in (False, True):
                d = generate_stack(Path(tmp) / f"s{size}{'p' if presets else ''}", size, presets)
                n = _count(d)
                label = f"validate {n} resources" + (" (every fine-tune from a preset)" if presets else "")
                repeats = args.repeats if size <= 1000 else max(1, args.repeats // 2)
                rows.append((label, *_time([*ZSCONF, "validate", str(d)], repeats)))
    width = max(len(r[0]) for r in rows)
    print(f"{'command'.ljust(width)}  median s  rc")
    for label, seconds, rc in rows:
        print(f"{label.ljust(width)}  {seconds:8.3f}  {rc}")


if __name__ == "__main__":
    main()
