"""Every command with hostile arguments, as a person would mistype them, run as real processes:
missing paths, files of the wrong kind, random bytes, JSON that is not a plan, directories where
files go, unknown addresses, bad durations. Each must end in one line on stderr (exit 1) or a
usage error (exit 2), never a traceback, and must create no state where there was none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# {stack}: a valid stack never applied; {file}: a text file; {rand}: random bytes; {empty}: an
# empty directory; {v1}/{list}: JSON that is not a plan.
CASES = [
    "apply {rand}",
    "apply {v1}",
    "apply {list}",
    "apply {file}",
    "apply /nonexistent/stack",
    "apply {empty}",
    "apply {stack} --lock-timeout forever",
    "plan {stack} -o /nonexistent/dir/plan.json",
    "plan {stack} -o {empty}",
    "plan /nonexistent/stack",
    "plan {file}",
    "plan -C {empty}",
    "destroy /nonexistent/stack",
    "validate {file}",
    "validate /nonexistent/stack",
    "init {file}",
    "schema -o {empty}",
    "schema -o /nonexistent/dir/schema.json",
    "show -C {empty}",
    "show deployment/nope/x -C {stack}",
    "show {stack}",
    "state show nope -C {stack}",
    "state rm nope -C {stack}",
    "state list -C /nonexistent/stack",
    "force-unlock nope -C {stack}",
    "status /nonexistent/stack",
    "status {file}",
    "status -C {empty}",
    "events {stack}",
    "events -C {stack} --since soon",
    "events -C {empty}",
    "logs deployment/acme/nope -C {stack}",
    "logs {stack}",
    "job stop nope -C {stack}",
    "job resume finetune/acme/nope -C {stack}",
    "job checkpoints nope -C {stack}",
    "job stop nope -C {stack} --lock-timeout forever",
    "keys list nope -C {stack}",
    "keys create service_group/acme/nope -C {stack}",
    "keys create deployment/acme/x -C {stack}",
    "keys revoke a/b/c/d -C {stack}",
    "keys unshown -C {empty}",
    "usage -C {stack} --since soon",
    "usage -C {stack} --csv {empty}",
    "usage -C {stack} --csv /nonexistent/dir/u.csv",
    "usage -C {stack} --group deployment/acme/x",
    "daemon {empty}",
    "daemon {stack} --interval soon",
    "up {file}",
    "up /nonexistent/stack",
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    stack = root / "stack"
    (stack / "data").mkdir(parents=True)
    (stack / "data" / "faq.jsonl").write_text(
        json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\n"
    )
    (stack / "stack.yaml").write_text(
        "platform: {default_tenant: acme}\ntenants:\n  acme: {}\n"
        "datasets:\n  faq: {path: data/faq.jsonl, format: alpaca}\n"
    )
    (root / "file.txt").write_text("hello\n")
    (root / "rand.bin").write_bytes(os.urandom(300))
    (root / "v1.json").write_text('{"format_version": 1}')
    (root / "list.json").write_text("[1, 2]")
    (root / "empty").mkdir()
    return {"stack": str(stack), "file": str(root / "file.txt"), "rand": str(root / "rand.bin"),
            "v1": str(root / "v1.json"), "list": str(root / "list.json"), "empty": str(root / "empty")}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_hostile_arguments_get_one_line_never_a_traceback(case: str, places: dict[str, str]) -> None:
    argv = case.format(**places).split()
    env = {k: v for k, v in os.environ.items() if k != "ZSCONF_STATE_URL"}
    r = subprocess.run([sys.executable, "-m", "zsconf.cli.main", *argv], capture_output=True, text=True,
                       env=env, cwd=places["empty"], timeout=60)  # fmt: skip
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
    if r.returncode == 1:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error "), r.stderr
    else:  # click's usage error names the option
        assert "Invalid value" in r.stderr or "Usage:" in r.stderr, r.stderr
    # Nothing was created: no state in the stack (never applied) or elsewhere.
    for where in ("stack", "empty"):
        assert not (Path(places[where]) / ".zsconf").exists(), f"{case} created {places[where]}/.zsconf"
    assert not Path("/nonexistent").exists()
