"""Apply a stack's preset defaults entries (`- finetune/lora@finetunes.x`) without Hydra, when
they are the simple kind: an explicit package on one resource, a plain preset file.

Called by `zsconf.loading.compose` before it decides what needs Hydra. Why: Hydra merges each
defaults entry into the whole config accumulated so far, which copies it, so a stack with a preset
per fine-tune grows quadratically (1,000 resources with 111 presets: 2.8 s). Merging a preset into
its one resource is what Hydra's merge amounts to for these entries; anything else (a preset with
its own defaults, `optional`/`override` entries, a `hydra:` section, `???` over a value) is left
to Hydra by returning None, and tests compare both ways on the same stacks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.stack import KINDS
from zsconf.loading.yaml_io import load_yaml

__all__ = ["Premerged", "premerge_presets"]

_MISSING = "???"


@dataclass
class Premerged:
    config: dict[str, Any]  # the stack with its presets merged in and no `defaults` key
    # (display name, path, package) of every file, in merge order (the stack file included)
    sources: list[tuple[str, Path, tuple[str, ...]]]


class _NotSimple(Exception):
    pass


def _entry(entry: Any) -> tuple[str, list[str]]:
    """`group/option@kind.name...` (string or `{group@pkg: option}`) -> (config path, package)."""
    if isinstance(entry, str):
        if "@" not in entry:
            raise _NotSimple
        config, package = entry.split("@", 1)
    elif isinstance(entry, dict) and len(entry) == 1:
        ((key, option),) = entry.items()
        key = str(key)
        if key.startswith(("override ", "optional ")) or "@" not in key or not isinstance(option, str):
            raise _NotSimple
        group, package = key.split("@", 1)
        config = f"{group}/{option}"
    else:
        raise _NotSimple
    parts = [p for p in package.strip().split(".") if p]
    if len(parts) < 2 or parts[0] not in KINDS or "/" not in config:
        raise _NotSimple
    return config.strip(), parts


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """OmegaConf.merge for plain data, in place: mappings merge key by key, everything else
    replaces, and `???` (missing) never replaces a value."""
    for key, value in src.items():
        if key in dst and isinstance(dst[key], dict) and isinstance(value, dict):
            _merge(dst[key], value)
        elif value == _MISSING and key in dst:
            continue
        else:
            dst[key] = value


def _wrap(package: list[str], data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = copy.deepcopy(data)
    for part in reversed(package):
        out = {part: out}
    return out


def premerge_presets(
    raw: dict[str, Any], stack_dir: Path, display_dir: Path, recipes_dir: Path
) -> Premerged | None:
    """`raw` with its simple preset entries merged in, or None when Hydra must do it."""
    defaults = raw.get("defaults")
    if not isinstance(defaults, list) or "hydra" in raw:
        return None
    cache: dict[Path, dict[str, Any]] = {}
    before: list[tuple[dict[str, Any], tuple[str, Path, tuple[str, ...]]]] = []
    after: list[tuple[dict[str, Any], tuple[str, Path, tuple[str, ...]]]] = []
    seen_self = False
    try:
        for entry in defaults:
            if entry == "_self_":
                seen_self = True
                continue
            config, package = _entry(entry)
            rel = f"{config}.yaml"
            # Hydra's search path order: the stack directory first, then zsconf's recipes.
            if (stack_dir / rel).is_file():
                path, shown = stack_dir / rel, str(display_dir / rel)
            elif (recipes_dir / rel).is_file():
                path, shown = recipes_dir / rel, f"recipes/{rel}"
            else:
                raise _NotSimple  # Hydra reports the missing preset with its options
            if path not in cache:
                data = load_yaml(path, shown)
                if data is None:
                    data = {}
                if not isinstance(data, dict) or "defaults" in data:
                    raise _NotSimple
                cache[path] = data
            (after if seen_self else before).append(
                (_wrap(package, cache[path]), (shown, path, tuple(package)))
            )
    except _NotSimple:
        return None
    except Exception:
        return None  # a preset that does not parse: let Hydra report it

    merged: dict[str, Any] = {}
    for patch, _ in before:
        _merge(merged, patch)
    _merge(merged, {k: v for k, v in raw.items() if k != "defaults"})
    for patch, _ in after:
        _merge(merged, patch)
    stack_source = (str(display_dir / "stack.yaml"), stack_dir / "stack.yaml", ())
    sources = [s for _, s in before] + [stack_source] + [s for _, s in after]
    return Premerged(merged, sources)
