"""The control plane stays light: `zsconf --help` and `zsconf validate` never import torch,
transformers or litestar (checked in a fresh interpreter, at exit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "litestar", "peft", "llmcompressor", "vllm")

# Runs the real console entry point, then reports which heavy modules got imported.
PROBE = """
import atexit, json, sys
def report():
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(__HEAVY__))
    sys.__stderr__.write('heavy-modules=' + json.dumps(heavy) + '\\n')
atexit.register(report)
sys.argv = ['zsconf'] + __ARGS__
from zsconf.cli.main import run
run()
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", "examples/stacks/quickstart"],
        ["validate", "examples/stacks/ascend-prod", "--json"],
    ],
)
def test_cli_does_not_import_heavy_modules(args: list[str]) -> None:
    code = PROBE.replace("__HEAVY__", repr(HEAVY)).replace("__ARGS__", repr(args))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("heavy-modules="))
    assert json.loads(line.removeprefix("heavy-modules=")) == []
