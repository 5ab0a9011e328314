"""`zsconf init`, `zsconf validate` and `zsconf schema`, through typer's runner and as real
subprocesses; dataset files read for real; secrets never in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsconf.cli.main import app
from zsconf.validate import validate_stack

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples/stacks/quickstart"
ZSCONF = [sys.executable, "-m", "zsconf.cli.main"]

runner = CliRunner()


def write_stack(root: Path, text: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    for rel, body in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body, encoding="utf-8")
    return root


GOOD_LINE = '{"instruction": "q", "input": "", "output": "a"}\n'


def test_validate_quickstart_summary() -> None:
    result = runner.invoke(app, ["validate", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    assert "2 evaluations" in result.output
    assert "dataset faq" in result.output and "40 samples" in result.output
    assert "valid" in result.output


def test_validate_json_and_override() -> None:
    result = runner.invoke(app, ["validate", str(QUICKSTART), "deployments.faq-chat.instances=3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["resources"]["deployments"] == 1
    assert data["datasets"][0]["samples"] == 40
    assert len(data["config_hash"]) == 64


def test_validate_both_examples() -> None:
    for name in ("quickstart", "ascend-prod"):
        result = validate_stack(REPO / "examples/stacks" / name)
        assert result.ok, [str(d) for d in result.diagnostics]
        assert all(d.samples and d.samples > 0 for d in result.datasets)


def test_invalid_stack_exit_1_one_error_per_line(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        """
        tenants:
          acme: {}
        models:
          base: {base: debug/tiny-qwen2}
        deployments:
          chat: {model: base@1, instances: 0}
          other: {model: base@1, qps: -1}
        """,
    )
    result = runner.invoke(app, ["validate", str(root)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if "stack.yaml:" in line]
    assert lines == [
        f"{root / 'stack.yaml'}:6: deployments.chat.instances: Input should be greater than or equal to 1",
        f"{root / 'stack.yaml'}:7: deployments.other.qps: Input should be greater than 0",
    ]
    as_json = runner.invoke(app, ["validate", str(root), "--json"])
    assert as_json.exit_code == 1
    assert [e["line"] for e in json.loads(as_json.stdout)["errors"]] == [6, 7]


def test_dataset_lines_are_read_for_real(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        """
        tenants:
          acme: {}
        datasets:
          chats: {path: data/chats.jsonl, format: alpaca}
          gone: {path: data/gone.jsonl, format: alpaca}
          few: {path: data/few.jsonl, format: alpaca, min_samples: 5}
        """,
        files={
            "data/chats.jsonl": GOOD_LINE + "{not json\n" + GOOD_LINE,
            "data/few.jsonl": GOOD_LINE * 2,
        },
    )
    result = validate_stack(root)
    assert not result.ok
    bad = [d for d in result.diagnostics if d.file and d.file.endswith("chats.jsonl")]
    assert [d.line for d in bad] == [2]
    assert any(d.path == "datasets.gone.path" and "not found" in d.message for d in result.diagnostics)
    few = [d for d in result.diagnostics if d.path == "datasets.few.min_samples"]
    assert few and "2 samples" in few[0].message and few[0].line == 6
    counts = {d.name: d.samples for d in result.datasets}
    assert counts["few"] == 2 and counts["gone"] is None


def test_no_datasets_flag_skips_reading(tmp_path: Path) -> None:
    root = write_stack(
        tmp_path,
        "tenants:\n  acme: {}\ndatasets:\n  gone: {path: data/gone.jsonl, format: alpaca}\n",
    )
    assert runner.invoke(app, ["validate", str(root), "--no-datasets"]).exit_code == 0
    assert runner.invoke(app, ["validate", str(root)]).exit_code == 1


SECRET = "pa55-w0rd-XYZ"


def test_secrets_never_in_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZSCONF_SECRET_DB", SECRET)
    root = write_stack(
        tmp_path,
        """
        platform:
          state_url: postgresql+psycopg://zs:${secret:DB}@db/zs
        tenants:
          acme:
            description: ${secret:DB}
        service_groups:
          app: {services: ["${secret:DB}"]}
        """,
    )
    for args in (["validate", str(root)], ["validate", str(root), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert SECRET not in result.output and SECRET not in result.stderr
        assert "********" in result.output + result.stderr
    # Valid stack: nothing printed carries the value either.
    fixed = root / "stack.yaml"
    fixed.write_text(fixed.read_text().replace('["${secret:DB}"]', "[]"))
    ok = runner.invoke(app, ["validate", str(root), "--json"])
    assert ok.exit_code == 0, ok.output
    assert SECRET not in ok.output


def test_init_scaffolds_a_valid_stack(tmp_path: Path) -> None:
    target = tmp_path / "my-team"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    for rel in ("stack.yaml", "data/sample.jsonl", ".gitignore", "stack.schema.json"):
        assert (target / rel).is_file(), rel
    gitignore = (target / ".gitignore").read_text().splitlines()
    assert ".zsconf/" in gitignore and "secrets.yaml" in gitignore
    assert (target / "stack.yaml").read_text().startswith("# yaml-language-server: $schema=stack.schema.json")
    check = runner.invoke(app, ["validate", str(target)])
    assert check.exit_code == 0, check.output + check.stderr
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 1  # refuses to overwrite


def test_schema_export(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"finetunes", "deployments", "service_groups", "defaults"} <= set(schema["properties"])
    out = tmp_path / "stack.schema.json"
    assert runner.invoke(app, ["schema", "-o", str(out)]).exit_code == 0
    written = json.loads(out.read_text())
    assert written["title"] == "zsconf stack"
    # The schema knows the ranges: an editor can flag learning_rate: 0.5.
    hp = written["$defs"]["Hyperparameters"]["properties"]["learning_rate"]
    assert hp["maximum"] == 0.1
    # What the validators accept, the schema accepts: `auto_stop: 6h`, `max_perplexity_increase: 5%`.
    auto_stop = json.dumps(written["$defs"]["JobOptions"]["properties"]["auto_stop"])
    assert '"type": "string"' in auto_stop
    gate = json.dumps(written["$defs"]["CompressionGate"]["properties"]["max_perplexity_increase"])
    assert '"type": "string"' in gate


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*ZSCONF, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_real_subprocess_valid_and_invalid(tmp_path: Path) -> None:
    ok = _run("validate", "examples/stacks/quickstart")
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "\x1b[" not in ok.stdout  # piped: plain text
    root = write_stack(tmp_path, "tenants:\n  acme:\n    quotas: {max_cards: -2}\n")
    bad = _run("validate", str(root))
    assert bad.returncode == 1
    assert f"{root / 'stack.yaml'}:3: tenants.acme.quotas.max_cards:" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = _run("validate", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "zsconf init" in missing.stderr


FT_STACK = """\
platform: {device: cpu, default_tenant: acme}
tenants:
  acme: {}
datasets:
  faq: {path: data/faq.jsonl, format: alpaca}
models:
  base: {base: debug/tiny-qwen2}
finetunes:
  ft:
    model: base
    datasets: {train: faq}
    hyperparameters: {epochs: 1, global_batch_size: 32, checkpoints: 5}
    output: {model: bot}
"""


def _ft_stack(root: Path, samples: int = 40) -> Path:
    (root / "data").mkdir(parents=True)
    rows = [json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) for i in range(samples)]
    (root / "data" / "faq.jsonl").write_text("\n".join(rows) + "\n")
    (root / "stack.yaml").write_text(FT_STACK)
    return root


def test_plan_refuses_what_validate_refuses(tmp_path: Path) -> None:
    """Plan (a process, as a person runs it) checks the dataset files and the derived checkpoint
    rule exactly as validate does: same lines, exit 1, no traceback."""
    root = _ft_stack(tmp_path / "s")
    # 40 samples / batch 32, rounded up, x 1 epoch = 2 iterations: checkpoints 5 is out of range.
    for cmd in ("validate", "plan"):
        r = _run(cmd, str(root))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert (
            f"{root / 'stack.yaml'}:12: finetunes.ft.hyperparameters.checkpoints: checkpoints must be "
            in r.stderr
        )
        assert "= 1-2: this job runs 2 iterations (40 samples" in r.stderr
    (root / "stack.yaml").write_text(FT_STACK.replace("checkpoints: 5", "checkpoints: 2"))
    assert _run("plan", str(root)).returncode == 0
    # A directory where the dataset file should be: the same one line from both, no traceback.
    (root / "data" / "faq.jsonl").unlink()
    (root / "data" / "faq.jsonl").mkdir()
    for cmd in ("validate", "plan"):
        r = _run(cmd, str(root))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert (
            f":5: datasets.faq.path: is a directory, not a dataset file: {root / 'data' / 'faq.jsonl'}"
            in r.stderr
        )
    # A missing file: plan refuses (it planned additions and exit 0 before).
    (root / "data" / "faq.jsonl").rmdir()
    r = _run("plan", str(root), "--detailed-exitcode")
    assert r.returncode == 1 and "datasets.faq.path: dataset file not found" in r.stderr
    assert not (root / ".zsconf" / "state.db").exists()  # plan is read only


def test_schema_and_reference_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    """A schema error in one resource does not hide a reference error in another, and what
    refers to the invalid one is not reported as dangling (it is defined, only wrong)."""
    (tmp_path / "stack.yaml").write_text(
        "platform: {default_tenant: acme}\ntenants:\n  acme: {}\nmodels:\n  base: {base: debug/tiny-qwen2}\n"
        "deployments:\n  chat: {model: base, instances: -3}\n  chat2: {model: nothere}\n"
        "service_groups:\n  app: {services: [chat, chat2], keys: 1}\n"
    )
    for cmd in ("validate", "plan"):
        r = _run(cmd, str(tmp_path))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert ":7: deployments.chat.instances:" in r.stderr
        assert ":8: deployments.chat2.model: deployment/acme/chat2 refers to model 'nothere'" in r.stderr
        assert "refers to deployment 'chat'" not in r.stderr and "2 error(s)" in r.stderr
