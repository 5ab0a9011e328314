"""The `${secret:NAME}` resolver and the mask that keeps resolved secrets out of any output.

Called by `zsconf.loading.compose` while it resolves a stack, and by every part that prints or
writes config (CLI, plan rendering, logs) through `SecretMask.text` / `SecretMask.data`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MASK", "SECRET_FILES", "SecretMask", "SecretNotFound", "lookup_secret", "secret_scope"]

MASK = "********"
# Looked up in this order after the environment; both are in the .gitignore `zsconf init` writes.
SECRET_FILES = (".zsconf/secrets.yaml", "secrets.yaml")


class SecretNotFound(KeyError):
    """`${secret:NAME}` names a secret that is neither in the environment nor in a secrets file."""


@dataclass(frozen=True)
class SecretMask:
    """The resolved secret values of a loaded stack and the dotted paths that hold them."""

    values: frozenset[str] = field(default=frozenset(), repr=False)  # never in a repr or a log
    paths: frozenset[str] = frozenset()

    def text(self, text: str) -> str:
        """`text` with every secret value replaced by MASK (longest first, so overlaps mask fully)."""
        for value in sorted(self.values, key=len, reverse=True):
            if value:
                text = text.replace(value, MASK)
        return text

    def data(self, obj: Any) -> Any:
        """A copy of a JSON-like value with every string masked (for --json output and dumps)."""
        if not self.values:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.data(k): self.data(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.data(v) for v in obj]
        return obj

    def leaves(self, obj: Any, prefix: str = "") -> list[tuple[str, str]]:
        """(dotted path, value) of every string in a JSON-like value that holds a secret."""
        if isinstance(obj, str):
            return [(prefix, obj)] if self.values and self.text(obj) != obj else []
        if isinstance(obj, dict):
            return [
                leaf for k, v in obj.items() for leaf in self.leaves(v, f"{prefix}.{k}" if prefix else str(k))
            ]
        if isinstance(obj, list | tuple):
            return [leaf for i, v in enumerate(obj) for leaf in self.leaves(v, f"{prefix}[{i}]")]
        return []

    def __bool__(self) -> bool:
        return bool(self.values)


@dataclass
class _Scope:
    stack_dir: Path
    used: dict[str, str] = field(default_factory=dict)
    _files: dict[str, Any] | None = None

    def file_secrets(self) -> dict[str, Any]:
        if self._files is None:
            from zsconf.loading.yaml_io import load_yaml

            merged: dict[str, Any] = {}
            # Later files lose: .zsconf/secrets.yaml wins over secrets.yaml.
            for rel in reversed(SECRET_FILES):
                path = self.stack_dir / rel
                if path.is_file():
                    data = load_yaml(path, rel)
                    if isinstance(data, dict):
                        merged.update({str(k): v for k, v in data.items()})
            self._files = merged
        return self._files


_SCOPE: ContextVar[_Scope | None] = ContextVar("zsconf_secret_scope", default=None)


def lookup_secret(name: str, stack_dir: Path) -> str:
    """ZSCONF_SECRET_<NAME>, then NAME in the environment, then the secrets files."""
    for var in (f"ZSCONF_SECRET_{name}", name):
        if var in os.environ:
            return os.environ[var]
    scope = _SCOPE.get()
    files = scope.file_secrets() if scope is not None else _Scope(stack_dir).file_secrets()
    if name in files and files[name] is not None:
        return str(files[name])
    raise SecretNotFound(
        f"secret {name!r} not found: set ZSCONF_SECRET_{name} in the environment or add "
        f"`{name}: ...` to {SECRET_FILES[0]} (kept out of git)"
    )


def _resolve_secret(name: str) -> str:
    scope = _SCOPE.get()
    if scope is None:
        raise SecretNotFound("${secret:...} can only be resolved while zsconf loads a stack")
    value = lookup_secret(str(name), scope.stack_dir)
    scope.used[str(name)] = value
    return value


def register_resolver() -> None:
    """Register `secret` with OmegaConf once per process (uncached: values never sit in a cache)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("secret"):
        OmegaConf.register_new_resolver("secret", _resolve_secret, use_cache=False)


@contextmanager
def secret_scope(stack_dir: Path) -> Iterator[dict[str, str]]:
    """While active, `${secret:NAME}` resolves against `stack_dir`; yields name -> value used."""
    scope = _Scope(stack_dir)
    token = _SCOPE.set(scope)
    try:
        yield scope.used
    finally:
        _SCOPE.reset(token)
