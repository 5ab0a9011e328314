"""Terminal output shared by the commands: rich on a terminal, plain when piped."""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["console", "err_console", "print_error", "print_json"]


@cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def print_error(exc: BaseException) -> None:
    """One line per error (a StackError prints one line per diagnostic), no traceback."""
    from zsconf.errors import StackError

    out = err_console()
    if isinstance(exc, StackError):
        for diag in exc.diagnostics:
            out.print(f"[red]error[/red] {diag}", markup=True, highlight=False)
        out.print(f"{len(exc.diagnostics)} error(s)", markup=False)
        return
    out.print(f"[red]error[/red] {type(exc).__name__}: ", end="", markup=True)
    out.print(str(exc), markup=False, highlight=False)
