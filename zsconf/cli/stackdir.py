"""How every command names its stack and its resources: one convention for the whole CLI.

Registered options are used by every command module (`zsconf.cli.*_cmds`). The stack is the
positional DIR where a command has always taken one (validate, plan, apply, destroy, up, daemon,
status), `-C DIR` on every command (`--dir`; `--stack` kept as an alias), or else the stack that
contains the working directory, found upward as git finds its repository. A resource is named the
way the CLI prints it: `kind/tenant/name` (`tenant/name` for a tenant), with `kind/name` and a
bare `name` accepted where they are unambiguous (`schemas.stack.parse_reference`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from zsconf.errors import ZsconfError

__all__ = ["StackDir", "StackNotFoundError", "at_flag", "find_stack", "stack_dir"]

StackDir = Annotated[
    Path | None,
    typer.Option(
        "-C",
        "--dir",
        "--stack",
        metavar="DIR",
        help="The stack directory (default: the stack that contains the current directory).",
        show_default=False,
    ),
]


class StackNotFoundError(ZsconfError):
    """No stack where the command looked (a directory without stack.yaml, or none found upward)."""


def find_stack(start: Path, state_only: bool = False) -> Path | None:
    """The nearest directory at or above `start` with a stack.yaml (or, for `state_only`
    commands, with a stack's state: .zsconf/state.db)."""
    here = start.resolve()
    for d in (here, *here.parents):
        if _is_stack(d, state_only):
            return d
    return None


def _is_stack(d: Path, state_only: bool) -> bool:
    return (d / "stack.yaml").is_file() or (state_only and (d / ".zsconf" / "state.db").is_file())


def stack_dir(option: Path | None, positional: Path | None = None, *, state_only: bool = False) -> Path:
    """The stack a command works on, as the user named it (relative paths stay relative).

    `state_only` commands (keys, usage) also accept a directory without stack.yaml when
    ZSCONF_STATE_URL names the shared store."""
    if option is not None and positional is not None and option.resolve() != positional.resolve():
        raise StackNotFoundError(f"two stacks named: {positional} and -C {option}; name one")
    given = option if option is not None else positional
    if given is None:
        found = find_stack(Path.cwd(), state_only)
        if found is None:
            if state_only and os.environ.get("ZSCONF_STATE_URL"):
                return Path(".")
            raise StackNotFoundError(
                "no stack.yaml in the current directory or any directory above it: run this inside a "
                "stack, or name one with -C DIR"
            )
        return _relative(found)
    if not given.exists():
        raise StackNotFoundError(f"{given}: no such directory (`zsconf init {given}` creates a stack there)")
    if not given.is_dir():
        raise StackNotFoundError(
            f"{given} is a file, not a stack directory (the directory holding stack.yaml)"
        )
    if not _is_stack(given, state_only):
        if state_only and os.environ.get("ZSCONF_STATE_URL"):
            return given
        above = find_stack(given)
        hint = f"; the stack above it is {_relative(above)}" if above is not None else ""
        raise StackNotFoundError(f"{given} is not a stack: it has no stack.yaml{hint}")
    return given


def at_flag(directory: Path) -> str:
    """' -C DIR' for a command a person will paste where this one ran; '' when the working
    directory is inside that stack already."""
    import shlex

    here = find_stack(Path.cwd())
    if here is not None and here == Path(directory).resolve():
        return ""
    return f" -C {shlex.quote(str(directory))}"


def _relative(path: Path) -> Path:
    """`path` relative to the working directory when it is below it, else absolute."""
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()
    return rel if str(rel) != "" else Path(".")
