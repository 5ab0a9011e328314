"""`zsconf daemon`: run the reconciling daemon in the foreground.

Registered by `zsconf.cli.main` (COMMAND_MODULES). The top level stays light (`zsconf --help`
imports every command module): the daemon itself (`daemon.main.run_daemon`) is imported when the
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsconf.cli.stackdir import StackDir, stack_dir

__all__ = ["HELP", "daemon", "lock_seconds", "parse_seconds", "register"]


def parse_seconds(text: str, option: str, allow_zero: bool = False) -> float:
    """'30s', '2m', '1h', '1.5s' or a plain number of seconds -> seconds (a usage error names the
    option). Every duration option of the CLI is read here."""
    raw = text.strip().lower()
    try:
        value = (
            float(raw.removesuffix("s")) if raw.endswith("s") or raw.replace(".", "", 1).isdigit() else None
        )
        if value is None:
            from schemas.common import parse_duration

            value = float(parse_duration(raw))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30s, 2m, 1h)", param_hint=option) from exc
    if value < 0 or (value == 0 and not allow_zero):
        raise typer.BadParameter("must be more than 0", param_hint=option)
    return value


def lock_seconds(text: str) -> float:
    """--lock-timeout of apply, destroy, state rm and the job commands (0 = do not wait)."""
    return parse_seconds(text, "--lock-timeout", allow_zero=True)


def daemon(
    positional: Annotated[
        Path | None,
        typer.Argument(
            help="The stack directory (default: the stack containing the current one).", show_default=False
        ),
    ] = None,
    interval: Annotated[
        str,
        typer.Option(
            "--interval",
            help="How often to look for drift (a dead server, a deleted model folder) even when no "
            "file changed. File edits are acted on at once, whatever this says.",
        ),
    ] = "30s",
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete resources removed from the files. Off by default: they are kept and "
            "reported as orphans (`zsconf status`).",
        ),
    ] = False,
    no_auto_apply: Annotated[
        bool,
        typer.Option(
            "--no-auto-apply",
            help="Only watch and report: statuses show what is OutOfSync; apply by hand with `zsconf apply`.",
        ),
    ] = False,
    lease: Annotated[
        str,
        typer.Option(
            "--lease",
            help="Leader lease. One daemon reconciles a state store at a time; a second one on the "
            "same store stands by and takes over within this long after the leader dies.",
        ),
    ] = "15s",
    admin_port: Annotated[
        int | None,
        typer.Option(
            "--admin-port",
            help="Port of the admin API on 127.0.0.1 (default: a free one). `zsconf status`, "
            "`events` and `logs` find it through .zsconf/daemon.json.",
        ),
    ] = None,
    stack: StackDir = None,
) -> None:
    """Keep the running platform equal to the stack's files, until stopped (see HELP)."""
    from daemon.main import run_daemon

    seconds, lease_s = parse_seconds(interval, "--interval"), parse_seconds(lease, "--lease")
    code = run_daemon(stack_dir(stack, positional), interval=seconds, prune=prune, auto_apply=not no_auto_apply,
                      lease_s=lease_s, admin_port=admin_port)  # fmt: skip
    raise typer.Exit(code)


HELP = "\n\n".join(
    (
        "Keep the running platform equal to the stack's files, until stopped.",
        "Each pass is level-triggered: it plans from scratch and applies the difference. A pass runs "
        "when a file of the stack is saved, when a job or a model server ends, when the admin API's "
        "`POST /api/sync` asks for one, and every --interval to catch drift.",
        "A failed action is retried with backoff (5 s doubling to 5 min) without holding up "
        "unrelated resources. A stack that does not load is reported (`zsconf status`, `zsconf "
        "events`) and what already runs keeps running. A `zsconf apply` by hand holds the state lock; "
        "the daemon waits its turn.",
        "Ctrl-C or SIGTERM stops the daemon cleanly and leaves jobs, model servers and the gateway "
        "running: the next daemon adopts them without restarting them.",
        "Examples: `zsconf daemon examples/stacks/quickstart`; `zsconf daemon . --interval 10s --prune`",
    )
)


def register(app: typer.Typer) -> None:
    app.command("daemon", help=HELP)(daemon)
