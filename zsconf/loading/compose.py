"""Compose `STACK_DIR/stack.yaml` into one plain dict: Hydra defaults (presets), command-line
overrides, OmegaConf interpolation and the `${secret:NAME}` resolver.

Called by `zsconf.loading.stack.load_stack` only.

Why not hand the whole file to Hydra: OmegaConf builds a node object per value and merges node by
node, which costs about 0.7 ms per resource; a stack of thousands of plain resources would spend
seconds there for nothing. So the file is parsed once with libyaml (same scalar rules as OmegaConf),
and only what needs OmegaConf goes through Hydra: the non-resource sections, every resource that a
defaults entry, an override or an interpolation touches (and every resource an interpolation
refers to). Everything else is taken as parsed. When the stack does something this split cannot
follow exactly (a preset without an explicit resource package, a relative interpolation that
climbs out of its resource, a resolver that selects paths), the whole file goes through Hydra.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.stack import KINDS
from zsconf.errors import Diagnostic, StackError
from zsconf.loading.diagnostics import COMMAND_LINE, Source, SourceMap
from zsconf.loading.presets import premerge_presets
from zsconf.loading.yaml_io import YamlSyntaxError, load_yaml

__all__ = ["Composed", "compose_stack"]

STACK_FILE = "stack.yaml"
_STORE_NAME = "zsconf_stack"
# Hydra's ConfigStore is process-global and the reduced primary config lives there under one name:
# one composition at a time (the daemon loads from a watcher thread while the CLI API may too).
_HYDRA_LOCK = threading.Lock()
_INTERP = re.compile(r"\$\{\s*([^}:]*)(:?)")
# Resolvers whose arguments are not config paths: they cannot pull other resources in.
_PLAIN_RESOLVERS = frozenset({"secret", "oc.env", "oc.decode"})


@dataclass
class Composed:
    config: dict[str, Any]
    sources: list[Source]
    overrides: list[str]
    secret_values: dict[str, str] = field(default_factory=dict)
    secret_paths: set[str] = field(default_factory=set)
    via_hydra: str = "none"  # "none", "partial" or "full": how much went through Hydra


class _Full(Exception):
    """The split cannot follow this stack exactly: compose the whole file through Hydra."""


def _split_key(key: str) -> list[str]:
    return [part for part in key.split(".") if part != ""]


class _Touched:
    """Which resources (kind, name) need OmegaConf; raises _Full when the split is unsafe."""

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {}

    def touch_path(self, parts: Sequence[str]) -> None:
        if not parts:
            raise _Full
        if parts[0] in KINDS:
            if len(parts) < 2:
                raise _Full
            self.names.setdefault(parts[0], set()).add(parts[1])

    def scan_string(self, value: str, where: tuple[str, ...]) -> None:
        if value == "???":
            self.touch_path(where)
            return
        if "${" not in value:
            return
        self.touch_path(where)
        for match in _INTERP.finditer(value):
            body, colon = match.group(1).strip(), match.group(2)
            if colon:
                if body not in _PLAIN_RESOLVERS:
                    raise _Full
                continue
            if not body or "[" in body or "$" in body:
                raise _Full
            dots = len(body) - len(body.lstrip("."))
            if dots:
                base = list(where[: len(where) - dots])
                if len(base) + dots != len(where):
                    raise _Full
                self.touch_path(base + _split_key(body))
            else:
                self.touch_path(_split_key(body))

    def scan(self, node: Any, where: tuple[str, ...]) -> None:
        # Iterative: 10,000 resources make deep recursion needlessly slow.
        todo: list[tuple[Any, tuple[str, ...]]] = [(node, where)]
        while todo:
            item, here = todo.pop()
            if isinstance(item, str):
                self.scan_string(item, here)
            elif isinstance(item, dict):
                todo.extend((v, (*here, str(k))) for k, v in item.items())
            elif isinstance(item, list):
                todo.extend((v, (*here, str(i))) for i, v in enumerate(item))


def _defaults_package(entry: Any) -> list[str] | None:
    """The explicit package of a defaults entry, or None for `_self_`; _Full when not explicit."""
    if entry == "_self_":
        return None
    if isinstance(entry, str):
        key = entry
    elif isinstance(entry, dict) and len(entry) == 1:
        key = str(next(iter(entry)))
        for prefix in ("override ", "optional "):
            key = key.removeprefix(prefix)
    else:
        raise _Full
    if "@" not in key:
        raise _Full
    package = key.split("@", 1)[1].strip()
    if not package or package.startswith("_"):
        raise _Full
    return _split_key(package)


def _override_key(override: str) -> list[str]:
    key = override.split("=", 1)[0].strip().lstrip("+~")
    if not key or "@" in key or "/" in key or "[" in key:
        raise _Full
    return _split_key(key)


def _plan_split(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, set[str]]:
    touched = _Touched()
    defaults = raw.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, list):
            raise _Full
        for entry in defaults:
            package = _defaults_package(entry)
            if package is not None:
                touched.touch_path(package)
    for override in overrides:
        key = _override_key(override)
        touched.touch_path(key)
        # The value may interpolate other resources: they must be composed too.
        touched.scan_string(override.split("=", 1)[1] if "=" in override else "", tuple(key))
    for key, value in raw.items():
        if key in KINDS and not isinstance(value, dict):
            raise _Full
        touched.scan(value, (str(key),))
    return touched.names


def _needs_hydra(raw: dict[str, Any], overrides: Sequence[str], touched: dict[str, set[str]]) -> bool:
    if overrides or touched:
        return True
    defaults = raw.get("defaults")
    return defaults is not None and defaults != ["_self_"]


def _reduced(raw: dict[str, Any], touched: dict[str, set[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in KINDS:
            names = touched.get(key)
            if names:
                out[key] = {n: v for n, v in value.items() if n in names}
        else:
            out[key] = value
    # A resource added by a preset or a `+kind.name...` override needs its kind mapping.
    for key in touched:
        out.setdefault(key, {})
    return out


def _merge_back(raw: dict[str, Any], composed: dict[str, Any], touched: dict[str, set[str]]) -> None:
    """Put the untouched resources back, in file order."""
    for key, value in raw.items():
        if key not in KINDS or not value:
            continue
        names = touched.get(key, set())
        done = composed.get(key) or {}
        merged: dict[str, Any] = {}
        for name, spec in value.items():
            if name not in names:
                merged[name] = spec
            elif name in done:
                merged[name] = done[name]
        for name, spec in done.items():
            merged.setdefault(name, spec)
        composed[key] = merged


def _recipes_dir() -> Path:
    import recipes

    return Path(recipes.__file__).resolve().parent


def _hydra_compose(
    stack_dir: Path, display_dir: Path, primary: dict[str, Any] | None, overrides: Sequence[str]
) -> tuple[Any, list[Source]]:
    """Compose with Hydra's config loader, without a Hydra app: no `hydra` node, no cwd change,
    no output folders, no logging setup. `primary` None = load stack.yaml from the file."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.defaults_list import create_defaults_list
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    search_path = create_config_search_path(None)
    search_path.prepend("main", f"file://{stack_dir}")
    search_path.append("zsconf", "pkg://recipes", anchor=SearchPathQuery(provider="main"))
    name = "stack"
    if primary is not None:
        name = _STORE_NAME
        ConfigStore.instance().store(name=name, node=primary)
    loader = ConfigLoaderImpl(search_path)
    parsed, repo = loader._parse_overrides_and_create_caching_repo(name, list(overrides))
    with warnings.catch_warnings():
        # A stack without `_self_` gets it last (its values override its presets), as Hydra does;
        # Hydra's warning about the 1.0 -> 1.1 migration means nothing to a zsconf user.
        warnings.filterwarnings("ignore", message=".*Defaults list is missing `_self_`")
        defaults = create_defaults_list(
            repo=repo, config_name=name, overrides_list=parsed, prepend_hydra=False, skip_missing=False
        )
    cfg = loader._compose_config_from_defaults_list(defaults=defaults.defaults, repo=repo)
    # As Hydra does: struct mode first, so an override of a key that does not exist is an error
    # (use `+key=value` to add one).
    OmegaConf.set_struct(cfg, True)
    ConfigLoaderImpl._apply_overrides_to_config(defaults.config_overrides, cfg)

    sources: list[Source] = []
    recipes_dir = _recipes_dir()
    for result in defaults.defaults:
        if result.config_path is None:
            continue
        package = tuple(_split_key(result.package or ""))
        if result.primary or result.config_path in (name, "stack"):
            sources.append(Source(str(display_dir / STACK_FILE), stack_dir / STACK_FILE, ()))
            continue
        rel = f"{result.config_path}.yaml"
        for base, shown in ((stack_dir, display_dir), (recipes_dir, None)):
            if (base / rel).is_file():
                label = str(shown / rel) if shown is not None else f"recipes/{rel}"
                sources.append(Source(label, base / rel, package))
                break
    return cfg, sources


def _walk_strings(node: Any, where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    todo: list[tuple[Any, tuple[str, ...]]] = [(node, where)]
    while todo:
        item, here = todo.pop()
        if isinstance(item, str):
            yield here, item
        elif isinstance(item, dict):
            todo.extend((v, (*here, str(k))) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, (*here, str(i))) for i, v in enumerate(item))


def _missing_preset(exc: Exception, stack_dir: Path, raw: dict[str, Any], shown: str) -> Diagnostic:
    """A defaults entry names a preset that does not exist: say which, where, and what exists."""
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    if not missing:
        found = re.search(r"Could not (?:find|load) '([^']+)'", str(exc))
        missing = found.group(1) if found else ""
    group = missing.rsplit("/", 1)[0] if "/" in missing else ""
    options: set[str] = set()
    for base in (stack_dir, _recipes_dir()):
        folder = base / group
        if group and folder.is_dir():
            options.update(p.stem for p in folder.glob("*.yaml"))
    message = f"preset {missing!r} not found in the stack directory or zsconf's recipes/"
    if options:
        message += f"; {group}/ has: {', '.join(sorted(options))}"
    index = None
    for i, entry in enumerate(raw.get("defaults") or []):
        text = entry if isinstance(entry, str) else " ".join(f"{k} {v}" for k, v in dict(entry).items())
        if missing and missing.rsplit("/", 1)[-1] in str(text):
            index = i
            break
    path = "defaults" if index is None else f"defaults.{index}"
    line = None
    if index is not None:
        from zsconf.loading.yaml_io import line_map

        line = line_map(stack_dir / STACK_FILE).get(("defaults", str(index)))
    return Diagnostic(message=message, path=path, file=shown, line=line)


def _display(name: str, stack_dir: Path, shown: str) -> str:
    """A file path as the user sees it: under the stack directory as they named it."""
    path = Path(name)
    try:
        rel = path.resolve().relative_to(stack_dir)
    except (OSError, ValueError):
        return name
    return str(Path(shown).parent / rel)


def _hydra_diagnostic(
    exc: Exception, stack_dir: Path, raw: dict[str, Any], shown: str, overrides: Sequence[str]
) -> Diagnostic:
    """Map an error raised while composing to a Diagnostic naming where it comes from."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, MissingConfigException):
        return _missing_preset(exc, stack_dir, raw, shown)
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):  # a preset or group file that does not parse
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        file = _display(mark.name, stack_dir, shown) if mark is not None else shown
        return Diagnostic(f"YAML syntax error: {what}", file=file, line=mark.line + 1 if mark else None)
    message = str(exc).replace(f"'{_STORE_NAME}'", f"'{STACK_FILE}'").strip()
    path = ""
    file: str | None = shown
    line = None
    if isinstance(exc, OmegaConfBaseException):
        path = str(getattr(exc, "full_key", "") or "")
        message = message.split("\n    full_key:", 1)[0].strip()
    if isinstance(exc, OverrideParseException | ConfigCompositionException):
        file = COMMAND_LINE if overrides else shown
    elif path:
        file, line = SourceMap([Source(shown, stack_dir / STACK_FILE)], overrides).locate(path)
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return Diagnostic(message=message, path=path, file=file, line=line)


def compose_stack(stack_dir: Path, overrides: Sequence[str] = (), force_hydra: bool = False) -> Composed:
    """Compose the stack in `stack_dir`; raises StackError with every problem found.
    `force_hydra` sends the whole file through Hydra (tests compare both ways)."""
    display_dir = stack_dir
    stack_dir = stack_dir.resolve()
    stack_file = stack_dir / STACK_FILE
    shown = str(display_dir / STACK_FILE)
    if not stack_file.is_file():
        raise StackError(
            [Diagnostic(f"no {STACK_FILE} here (create one with `zsconf init {display_dir}`)", file=shown)]
        )
    try:
        raw = load_yaml(stack_file, shown)
    except YamlSyntaxError as exc:
        raise StackError([Diagnostic(exc.message, file=exc.file, line=exc.line)]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StackError([Diagnostic("the top level must be a mapping of sections", file=shown, line=1)])

    primary_source = Source(shown, stack_file, ())
    premerged = None if force_hydra else premerge_presets(raw, stack_dir, display_dir, _recipes_dir())
    if premerged is not None:
        raw = premerged.config
    try:
        touched: dict[str, set[str]] | None = None if force_hydra else _plan_split(raw, overrides)
    except _Full:
        touched = None
    if premerged is not None and touched is None:
        # The split cannot follow this stack: Hydra composes the file as written, presets included.
        # (Re-read: merging may have changed dicts of the first parse.)
        premerged = None
        raw = load_yaml(stack_file, shown)
    file_sources = [Source(*s) for s in premerged.sources] if premerged is not None else None
    if touched is not None and not _needs_hydra(raw, overrides, touched):
        config = {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}
        return Composed(config, file_sources or [primary_source], list(overrides))

    from omegaconf import OmegaConf

    from zsconf.loading.secrets import register_resolver, secret_scope

    register_resolver()
    primary = None if touched is None else _reduced(raw, touched)
    with _HYDRA_LOCK, secret_scope(stack_dir) as used:
        try:
            cfg, sources = _hydra_compose(stack_dir, display_dir, primary, overrides)
            if "hydra" in cfg:
                with _open(cfg):
                    del cfg["hydra"]
            config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except Exception as exc:
            if _is_user_error(exc):
                raise StackError([_hydra_diagnostic(exc, stack_dir, raw, shown, overrides)]) from None
            raise
        secret_paths: set[str] = set()
        if used:
            unresolved = OmegaConf.to_container(cfg, resolve=False)
            for where, text in _walk_strings(unresolved):
                if "secret:" in text:
                    secret_paths.add(".".join(where))
    assert isinstance(config, dict)
    if touched is not None:
        _merge_back(raw, config, touched)
    config.pop("defaults", None)
    return Composed(
        config,  # type: ignore[arg-type]
        file_sources or sources or [primary_source],
        list(overrides),
        secret_values=dict(used),
        secret_paths=secret_paths,
        via_hydra="full" if touched is None else "partial",
    )


def _open(cfg: Any) -> Any:
    from omegaconf import open_dict

    return open_dict(cfg)


def _is_user_error(exc: Exception) -> bool:
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, HydraException | OmegaConfBaseException | yaml.YAMLError | KeyError | ValueError)
