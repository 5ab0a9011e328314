"""Stack commands: `zsconf init`, `zsconf validate`, `zsconf schema`.

Registered by `zsconf.cli.main`. The module top level imports only typer and the standard library:
`zsconf --help` imports every command module, and it must stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from zsconf.cli.stackdir import StackDir

__all__ = ["SCHEMA_URL_HINT", "register"]

SCHEMA_URL_HINT = "# yaml-language-server: $schema=stack.schema.json"

_STACK_YAML = """\
{schema_line}
# A zsconf stack: the platform as code. Check it with `zsconf validate`, see what would change
# with `zsconf plan`, make it so with `zsconf apply`.
# Resources are referenced by name within their tenant; `model: NAME@latest` follows new versions.
# Secrets: write ${{secret:NAME}} and keep the value in the environment (ZSCONF_SECRET_NAME) or in
# .zsconf/secrets.yaml, which .gitignore keeps out of git. Secret values are never printed.

defaults:
  # Recipe presets shipped with zsconf (`zsconf catalog recipes`), mounted on one resource;
  # the values in this file override them because `_self_` comes last.
  - finetune/lora@finetunes.{name}-lora
  - _self_

platform:
  device: auto              # cpu, cuda, npu or auto
  default_tenant: {name}

tenants:
  {name}:
    description: My team.
    quotas:
      max_deployments: 2

datasets:
  sample:
    description: A few instruction/answer pairs in Alpaca format.
    path: data/sample.jsonl   # relative to this directory
    format: alpaca

models:
  base:
    base: debug/tiny-qwen2    # a catalog base model (`zsconf catalog models`)

finetunes:
  {name}-lora:
    model: base
    datasets:
      train: sample
    hyperparameters:
      epochs: 10
      learning_rate: 2.0e-3
      global_batch_size: 4
      micro_batch_size: 4
      sequence_length: 128
    resources:
      flavor: cpu.small
    output:
      model: {name}-bot

deployments:
  chat:
    model: {name}-bot@latest
    engine: embedded
    flavor: cpu.small
    instances: 1

service_groups:
  app:
    services: [chat]
    keys: 1
    rate_limits:
      per_key: {{rpm: 60}}
"""

_SAMPLES = [
    ("What is zsconf?", "Config-as-code for an LLM platform."),
    ("Say hello.", "Hello!"),
    ("What is 2 + 2?", "4."),
    ("中国的首都是哪里？", "北京。"),
]

_GITIGNORE = """\
# zsconf: local state, artifacts and secrets never go into git.
.zsconf/
secrets.yaml
"""


def init(
    directory: Annotated[Path, typer.Argument(help="where to create the stack")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing stack.yaml")] = False,
) -> None:
    """Scaffold a new stack repository: stack.yaml, a sample dataset, .gitignore."""
    import json
    import re

    from zsconf.cli.output import console

    if directory.exists() and not directory.is_dir():
        from zsconf.errors import ZsconfError

        raise ZsconfError(f"{directory} is a file; name a directory for the new stack")
    stack_file = directory / "stack.yaml"
    if stack_file.exists() and not force:
        from zsconf.errors import ZsconfError

        raise ZsconfError(f"{stack_file} already exists (use --force to overwrite it)")
    directory.mkdir(parents=True, exist_ok=True)
    raw = re.sub(r"[^A-Za-z0-9_-]+", "-", directory.resolve().name).strip("-_").lower()
    name = raw if raw[:1].isalpha() else f"team-{raw}" if raw else "team"
    stack_file.write_text(_STACK_YAML.format(schema_line=SCHEMA_URL_HINT, name=name[:40]), encoding="utf-8")
    data = directory / "data"
    data.mkdir(exist_ok=True)
    sample = data / "sample.jsonl"
    if not sample.exists() or force:
        lines = [
            json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False) for q, a in _SAMPLES
        ]
        sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gitignore = directory / ".gitignore"
    existing = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
    missing = [
        line for line in ("/.zsconf/", ".zsconf/", "secrets.yaml") if line not in existing.splitlines()
    ]
    if not existing:
        gitignore.write_text(_GITIGNORE, encoding="utf-8")
    elif ".zsconf/" in missing or "secrets.yaml" in missing:
        with gitignore.open("a", encoding="utf-8") as fh:
            fh.write("\n" + _GITIGNORE)
    _write_schema(directory / "stack.schema.json")
    console().print(
        f"Created a stack in {directory}: stack.yaml, data/sample.jsonl, .gitignore, stack.schema.json"
    )
    console().print(f"Next: zsconf validate {directory}")


def _schema() -> dict[str, Any]:
    from schemas import Stack

    schema = Stack.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "zsconf stack"
    # A stack file also carries Hydra's defaults list (presets), composed away before validation.
    schema.setdefault("properties", {})["defaults"] = {
        "type": "array",
        "description": "Hydra defaults list, e.g. `finetune/lora@finetunes.NAME` then `_self_`",
        "items": {"anyOf": [{"type": "string"}, {"type": "object"}]},
    }
    return schema


def _write_schema(path: Path) -> None:
    import json

    path.write_text(json.dumps(_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def schema(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write to this file")] = None,
) -> None:
    """Write the JSON Schema of stack.yaml, for editors.

    With the YAML language server (VS Code's YAML extension and others), put this first line in
    stack.yaml to get completion and checks while typing:

        # yaml-language-server: $schema=stack.schema.json
    """
    import json

    if output is None:
        sys.stdout.write(json.dumps(_schema(), indent=2, ensure_ascii=False) + "\n")
        return
    _write_schema(output)
    from zsconf.cli.output import err_console

    err_console().print(
        f"Wrote {output}; add `{SCHEMA_URL_HINT.replace('stack.schema.json', str(output))}` to stack.yaml"
    )


def validate(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="the stack directory (default: the stack containing the current directory), then Hydra "
            "overrides such as deployments.chat.instances=4",
            show_default=False,
            metavar="DIR OVERRIDE",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    datasets: Annotated[
        bool, typer.Option("--datasets/--no-datasets", help="read every dataset file")
    ] = True,
    stack: StackDir = None,
) -> None:
    """Check a stack: schemas, references, catalog support, quotas and every dataset line."""
    from zsconf.cli.output import console, err_console, print_json
    from zsconf.cli.plan_cmds import _split
    from zsconf.validate import validate_stack

    directory, overrides = _split(args, stack)
    result = validate_stack(directory, overrides, check_datasets=datasets)
    if as_json:
        print_json(result.as_dict())
        # sys.exit, not typer.Exit: main.run() calls the app with standalone_mode=False, where
        # click returns typer.Exit's code instead of exiting with it.
        sys.exit(0 if result.ok else 1)
    out = console()
    if result.loaded is not None:
        _print_summary(result)
    err = err_console()
    for diag in result.diagnostics:
        err.print(str(diag), markup=False, highlight=False)
    if result.ok:
        out.print(f"valid ({result.seconds:.2f} s)", markup=False)
        sys.exit(0)
    err.print(f"invalid: {len(result.diagnostics)} error(s)", markup=False)
    sys.exit(1)


def _print_summary(result: Any) -> None:
    from zsconf.cli.output import console

    out = console()
    counts = {k: v for k, v in result.counts().items() if v}
    if not out.is_terminal:
        out.print(
            f"{result.stack_dir}: " + (", ".join(f"{n} {k}" for k, n in counts.items()) or "no resources"),
            markup=False,
        )
        for d in result.datasets:
            samples = "unreadable" if d.samples is None else f"{d.samples} samples"
            bad = f", {d.errors} bad" if d.errors else ""
            out.print(f"dataset {d.name}: {d.file} ({d.format}) {samples}{bad}", markup=False)
        return
    from rich.table import Table

    table = Table(title=f"stack {result.stack_dir}", show_header=True, header_style="bold")
    table.add_column("kind")
    table.add_column("resources", justify="right")
    for key, n in counts.items():
        table.add_row(key, str(n))
    out.print(table)
    if result.datasets:
        ds = Table(show_header=True, header_style="bold")
        for col in ("dataset", "file", "format", "samples", "bad lines"):
            ds.add_column(col, justify="right" if col in ("samples", "bad lines") else "left")
        for d in result.datasets:
            ds.add_row(d.name, d.file, d.format, "-" if d.samples is None else str(d.samples), str(d.errors))
        out.print(ds)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("validate")(validate)
    app.command("schema")(schema)
