"""YAML reading for stack loading: a fast loader with OmegaConf's scalar rules, and a line map.

Called by `zsconf.loading.compose` (the fast loader, on every load) and by
`zsconf.loading.diagnostics` (the line map, only when there are errors to place).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YamlSyntaxError", "line_map", "load_yaml"]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(Exception):
    """A YAML file does not parse; carries the file and the 1-based line."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message


class _FastLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """libyaml's parser with OmegaConf's resolution rules, so a value reads the same whether a
    resource goes through OmegaConf or not: `2e-3` is a float (YAML 1.1 would say string), no
    timestamps, and duplicate keys are errors."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag != yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG:
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value}",
                    key_node.start_mark,
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


# The same float pattern as omegaconf._utils.get_yaml_loader.
_FastLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:
     [-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
    |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9]+(?:_[0-9]+)*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_FastLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in _FastLoader.yaml_implicit_resolvers.items()
}


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


def _build(loader: Any, node: yaml.Node) -> Any:
    """Node tree -> Python values. The same result as the loader's own constructor for the plain
    YAML stacks are made of, about twice as fast: no per-node bookkeeping, strings taken as they
    are; anything unusual (tags, merge keys `<<`) goes to the stock constructor."""
    cls = node.__class__
    if cls is yaml.ScalarNode:
        tag = node.tag
        if tag == _STR:
            return node.value
        return loader.construct_object(node, deep=True)
    if cls is yaml.MappingNode and node.tag == _MAP:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE or key_node.__class__ is not yaml.ScalarNode:
                return loader.construct_object(node, deep=True)
            key = _build(loader, key_node)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value}",
                    key_node.start_mark,
                )
            out[key] = _build(loader, value_node)
        return out
    if cls is yaml.SequenceNode and node.tag == _SEQ:
        return [_build(loader, item) for item in node.value]
    return loader.construct_object(node, deep=True)


def load_yaml(path: Path, display: str | None = None) -> Any:
    """Parse one YAML file; a syntax error becomes YamlSyntaxError naming the file and line."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlSyntaxError(name, None, f"cannot read: {exc.strerror or exc}") from None
    loader = _FastLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _build(loader, node)
    except RecursionError:
        raise YamlSyntaxError(name, None, "YAML error: recursive alias") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise YamlSyntaxError(name, line, f"YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(name, None, f"YAML error: {exc}") from None
    finally:
        loader.dispose()


def line_map(path: Path, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Dotted key path (as a tuple, under `prefix`) -> 1-based line of the key in the file.

    Walks the node tree `yaml.compose` gives, which carries positions; slow next to `load_yaml`,
    so only called to place errors. A file that does not parse maps to nothing."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_BaseLoader)
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, ...], int] = {}
    if root is None:
        return out
    out[prefix] = root.start_mark.line + 1
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, prefix)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                here = (*where, str(key_node.value))
                out.setdefault(here, key_node.start_mark.line + 1)
                stack.append((value_node, here))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                here = (*where, str(index))
                out.setdefault(here, item.start_mark.line + 1)
                stack.append((item, here))
    return out
