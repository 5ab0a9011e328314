"""Shared pieces of the train tests: a memorisable Q&A dataset and run specs for runners.train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import TEST_DEVICE

REPO = Path(__file__).resolve().parent.parent

QA = [
    ("What colour is the sky?", "Blue."),
    ("What is two plus two?", "Four."),
    ("Name a fruit.", "Apple."),
    ("Capital of France?", "Paris."),
    ("What do cows drink?", "Water."),
    ("Opposite of hot?", "Cold."),
    ("How many legs has a cat?", "Four legs."),
    ("Say hello.", "Hello!"),
    ("中国的首都是哪里？", "北京。"),
    ("What is ice?", "Frozen water."),
    ("Which animal barks?", "A dog."),
    ("What comes after Monday?", "Tuesday."),
    ("What is the sun?", "A star."),
    ("Largest ocean?", "The Pacific."),
    ("What do bees make?", "Honey."),
    ("Colour of grass?", "Green."),
]


def write_alpaca(path: Path, n: int = 16) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for q, a in QA[:n]:
            fh.write(json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False) + "\n")
    return path


def write_text(path: Path, n: int = 16) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for q, a in QA[:n]:
            fh.write(json.dumps({"text": f"{q} {a}"}, ensure_ascii=False) + "\n")
    return path


def spec(
    tmp: Path,
    model_dir: Path,
    data: Path,
    fmt: str = "alpaca",
    method: str = "lora",
    resume: bool = False,
    resources: dict | None = None,
    validation: Path | None = None,
    **hp: Any,
) -> Path:
    hyper = {
        "epochs": 1,
        "learning_rate": 1e-2,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "sequence_length": 64,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "seed": 1,
        **hp,
    }
    body = {
        "run_id": "r-test",
        "address": f"finetune/acme/{method}",
        "workdir": str(tmp / "work"),
        "output_dir": str(tmp / "out"),
        "device": TEST_DEVICE,
        "spec": {
            "description": "test",
            "model": "base",
            "method": method,
            "datasets": {"train": "qa"},
            "hyperparameters": hyper,
            "resources": resources or {},
            "output": {"model": "tuned", "description": "tuned"},
        },
        "inputs": {"model_dir": str(model_dir), "datasets": {"train": {"path": str(data), "format": fmt}}},
        "resume": resume,
    }
    if validation is not None:
        body["spec"]["datasets"]["validation"] = "qa-val"  # type: ignore[index]
        body["inputs"]["datasets"]["validation"] = {"path": str(validation), "format": fmt}  # type: ignore[index]
    path = tmp / "spec.json"
    path.write_text(json.dumps(body))
    return path


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_runner(spec_path: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runners.train", str(spec_path)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def result(tmp: Path) -> dict:
    return json.loads((tmp / "work" / "result.json").read_text())


def metrics(tmp: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp / "work" / "metrics.jsonl").read_text().splitlines()]
