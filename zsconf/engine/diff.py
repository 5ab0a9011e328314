"""Field-level diff of two spec dicts. Called by `zsconf.engine.plan`."""

from __future__ import annotations

from typing import Any

__all__ = ["drop_paths", "field_diffs"]


def field_diffs(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, before, after) of every leaf that differs; lists compare as wholes."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(field_diffs(before.get(key), after.get(key), path))
        return out
    return [] if before == after else [(prefix, before, after)]


def drop_paths(spec: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """A copy of `spec` without the dotted `paths` (lifecycle.ignore_changes)."""
    if not paths:
        return spec
    out = _copy(spec)
    for path in paths:
        parts = path.split(".")
        node: Any = out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    return obj
