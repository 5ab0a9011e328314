"""`zsconf` entry point: builds the typer app from the command modules and maps library errors
to one-line messages with exit code 1 (no tracebacks for user errors)."""

from __future__ import annotations

import importlib
import sys

import typer

from zsconf.errors import ZsconfError

__all__ = ["app", "run"]

app = typer.Typer(
    name="zsconf",
    help=(
        "Config-as-code for an LLM platform. Keep datasets, fine-tunes, compressions, evaluations, "
        "deployments and API keys in a git repository of Hydra YAML stacks; `zsconf plan` shows what "
        "would change, `zsconf apply` does it, `zsconf daemon` keeps it so."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Each module defines `register(app)`. Keep module top levels light: --help imports all of them.
COMMAND_MODULES = (
    "zsconf.cli.stack_cmds",
    "zsconf.cli.plan_cmds",
    "zsconf.cli.keys_cmds",
    "zsconf.cli.usage_cmds",
    "zsconf.cli.catalog_cmds",
    "zsconf.cli.status_cmds",
    "zsconf.cli.daemon_cmds",
    "zsconf.cli.up_cmds",
    "zsconf.cli.job_cmds",
    "zsconf.cli.env_cmds",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register()


def _warnings_to_stderr() -> None:
    """The library's warnings (`zsconf.*` loggers: a lock taken over, a pass that failed) as one
    line each on stderr; the daemon's own progress lines are printed by the daemon."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger("zsconf")
    root.addHandler(handler)
    root.propagate = False


def run() -> None:
    """Console-script entry point. Click handles usage errors and exit codes (standalone mode);
    library errors reach here and become one line each, exit 1, no traceback."""
    _warnings_to_stderr()
    try:
        app()
    except ZsconfError as exc:
        from zsconf.cli.output import print_error

        print_error(exc)
        sys.exit(1)
    except OSError as exc:  # a path the user gave that cannot be read or written
        from zsconf.cli.output import print_error

        where = f"{exc.filename}: " if exc.filename else ""
        print_error(ZsconfError(f"{where}{exc.strerror or exc}"))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
