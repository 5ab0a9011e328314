"""`zsconf daemon` on the command line: help that teaches, usage errors on bad durations, a
one-line error (exit 1, no traceback) for a directory without a stack, and duration parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _zsconf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zsconf.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_help_names_every_option_and_the_shutdown_rule() -> None:
    out = _zsconf("daemon", "--help")
    assert out.returncode == 0, out.stderr
    for opt in ("--interval", "--prune", "--no-auto-apply", "--lease", "--admin-port"):
        assert opt in out.stdout
    text = " ".join(out.stdout.replace("│", " ").split())  # rich boxes and wraps the help
    assert "reported as orphans" in text and "adopts them without restarting them" in text


def test_bad_duration_is_a_usage_error_and_a_missing_stack_one_line(tmp_path: Path) -> None:
    out = _zsconf("daemon", str(tmp_path), "--interval", "soon")
    assert out.returncode == 2 and "--interval" in out.stderr and "soon" in out.stderr
    out = _zsconf("daemon", str(tmp_path))
    assert out.returncode == 1
    assert "no stack.yaml" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1.5s", 1.5), ("2m", 120.0), ("15", 15.0)])
def test_parse_seconds(text: str, seconds: float) -> None:
    from zsconf.cli.daemon_cmds import parse_seconds

    assert parse_seconds(text, "--interval") == seconds
