"""`load_stack`: compose a stack directory, validate it with `schemas.Stack`, and hand back a
`LoadedStack`. Called by the graph builder, `zsconf validate`, and the plan/apply engine.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zsconf.errors import Diagnostic, StackError
from zsconf.loading.compose import compose_stack
from zsconf.loading.diagnostics import SourceMap, pydantic_diagnostics
from zsconf.loading.secrets import SecretMask

if TYPE_CHECKING:
    from schemas import Stack

__all__ = ["LoadedStack", "load_stack", "paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects that never form
    cycles (YAML nodes, dicts, pydantic models): its passes over the growing heap took half of the
    time of parsing a large stack. Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class LoadedStack:
    """A composed, schema-valid stack. `config_hash` changes whenever the composed config does
    (secrets included); `secrets` masks resolved secret values in anything printed."""

    stack: Stack
    stack_dir: Path
    sources: list[Path]
    config_hash: str
    secrets: SecretMask = field(default_factory=SecretMask)
    source_map: SourceMap = field(default_factory=lambda: SourceMap([]), repr=False)
    via_hydra: str = "none"
    # (kind key, name) of resources left out because their schema failed (a partial stack only)
    invalid: frozenset[tuple[str, str]] = frozenset()

    def __repr__(self) -> str:
        # The stack holds resolved secrets: a repr (logs, tracebacks) must not show them.
        return (
            f"LoadedStack({str(self.stack_dir)!r}, {len(self.sources)} files, hash={self.config_hash[:12]})"
        )

    def locate(self, path: str | Sequence[str]) -> tuple[str | None, int | None]:
        """(file, line) where the dotted `path` is written; builds the line map on first use."""
        return self.source_map.locate(path)

    def diagnostic(self, path: str | Sequence[str], message: str) -> Diagnostic:
        """A Diagnostic at `path` with secret values masked from `message`."""
        return self.source_map.diagnostic(path, self.secrets.text(message))


def _hash(config: object) -> str:
    data = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def load_stack(stack_dir: Path, overrides: Sequence[str] = ()) -> LoadedStack:
    """Compose and validate `stack_dir/stack.yaml`; raises StackError with every diagnostic."""
    from pydantic import ValidationError

    from schemas import Stack

    stack_dir = Path(stack_dir)
    with paused_gc():
        composed = compose_stack(stack_dir, overrides)
        mask = SecretMask(frozenset(composed.secret_values.values()), frozenset(composed.secret_paths))
        source_map = SourceMap(composed.sources, composed.overrides)
        sources = list(dict.fromkeys(s.path for s in composed.sources))  # a preset used twice: once

        def loaded(stack: Stack, invalid: frozenset[tuple[str, str]] = frozenset()) -> LoadedStack:
            return LoadedStack(stack=stack, stack_dir=stack_dir.resolve(), sources=sources,
                               config_hash=_hash(composed.config), secrets=mask, source_map=source_map,
                               via_hydra=composed.via_hydra, invalid=invalid)  # fmt: skip

        try:
            stack = Stack.model_validate(composed.config)
        except ValidationError as exc:
            partial = _without_invalid(composed.config, exc)
            raise StackError(
                pydantic_diagnostics(exc, source_map, mask), partial and loaded(partial[0], partial[1])
            ) from None
    return loaded(stack)


def _without_invalid(config: dict, exc: Exception) -> tuple[Stack, frozenset[tuple[str, str]]] | None:
    """The stack minus the resources whose schema failed, when every error is inside a resource
    and the rest validates; with the (kind key, name) pairs left out."""
    from pydantic import ValidationError

    from schemas import Stack
    from schemas.stack import KINDS

    bad: set[tuple[str, str]] = set()
    for err in exc.errors():  # type: ignore[attr-defined]
        loc = err.get("loc") or ()
        if len(loc) < 2 or loc[0] not in KINDS or loc[0] == "tenants":
            return None
        bad.add((str(loc[0]), str(loc[1])))
    rest = {k: ({n: v for n, v in val.items() if (k, n) not in bad} if k in KINDS and isinstance(val, dict) else val)
            for k, val in config.items()}  # fmt: skip
    try:
        return Stack.model_validate(rest), frozenset(bad)
    except ValidationError:
        return None
