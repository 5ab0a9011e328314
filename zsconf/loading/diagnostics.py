"""Turn validation errors into Diagnostics that name the file and line of the offending key.

Called by `zsconf.loading.stack` (pydantic errors) and `zsconf.graph` (reference errors). The line
map is built from the stack's files only when an error needs placing, so a valid stack pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.errors import Diagnostic
from zsconf.loading.yaml_io import line_map

if TYPE_CHECKING:
    from pydantic import ValidationError

    from zsconf.loading.secrets import SecretMask

__all__ = ["COMMAND_LINE", "Source", "SourceMap", "pydantic_diagnostics"]

COMMAND_LINE = "<command line>"  # where a Hydra override came from


@dataclass(frozen=True)
class Source:
    """A YAML file that contributed to the composed stack, mounted at `package` (dotted)."""

    file: str  # as shown to the user
    path: Path
    package: tuple[str, ...] = ()


class SourceMap:
    """Dotted path -> (file, line), over the files in merge order and the command-line overrides."""

    def __init__(self, sources: Sequence[Source], overrides: Sequence[str] = ()) -> None:
        self._sources = list(sources)
        self._overrides = [o.split("=", 1)[0].strip().lstrip("+~") for o in overrides]
        self._maps: list[tuple[Source, dict[tuple[str, ...], int]]] | None = None

    def _load(self) -> list[tuple[Source, dict[tuple[str, ...], int]]]:
        if self._maps is None:
            # Last merged first: its value is the one that stuck.
            self._maps = [(s, line_map(s.path, s.package)) for s in reversed(self._sources)]
        return self._maps

    def locate(self, path: str | Sequence[str]) -> tuple[str | None, int | None]:
        parts = tuple(path.split(".")) if isinstance(path, str) else tuple(str(p) for p in path)
        dotted = ".".join(parts)
        for key in reversed(self._overrides):
            if dotted == key or dotted.startswith(key + "."):
                return COMMAND_LINE, None
        maps = self._load()
        for source, lines in maps:
            if parts in lines:
                return source.file, lines[parts]
        # Not written anywhere (a missing field, a default): point at the closest enclosing key.
        for cut in range(len(parts) - 1, -1, -1):
            prefix = parts[:cut]
            for source, lines in maps:
                if prefix in lines and (prefix or not source.package):
                    return source.file, lines[prefix]
        first = self._sources[0].file if self._sources else None
        return first, None

    def diagnostic(self, path: str | Sequence[str], message: str) -> Diagnostic:
        file, line = self.locate(path)
        dotted = path if isinstance(path, str) else ".".join(str(p) for p in path)
        return Diagnostic(message=message, path=dotted, file=file, line=line)


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    loc = error["loc"]
    last = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return f"unknown field {last!r}"
    if kind == "missing":
        return f"missing required field {last!r}"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def pydantic_diagnostics(exc: ValidationError, sources: SourceMap, mask: SecretMask) -> list[Diagnostic]:
    """One Diagnostic per pydantic error, with secret values masked out of every message."""
    out: list[Diagnostic] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in error["loc"] if p != "[key]"]
        out.append(sources.diagnostic(loc, mask.text(_message(error))))
    return out
