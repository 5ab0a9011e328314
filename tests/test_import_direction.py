"""Imports point one way, read from the source (function-level imports included):

    schemas  <-  zsconf (core)  <-  daemon, runners  <-  zsconf.cli (on top)

- `schemas/` imports no other package of ours; `kernels/` none either.
- zsconf's core (everything but `zsconf.cli`) imports `schemas` and itself: never the daemon,
  the runners, kernels or the CLI. The engine reaches runners only through argv
  (`zsconf.registry`) and the daemon only by being called.
- `daemon/` imports `schemas` and zsconf's core, never the CLI or a runner.
- `runners/` import `schemas`, `kernels`, each other, and of zsconf only the state store (the
  gateway keeps keys and usage there): never the engine, the CLI or the daemon.
- The CLI sits on top: it imports what it drives (the engine, and the daemon it runs), no runner.
- No import cycle between two modules at run time (type-only imports under TYPE_CHECKING aside).

The CLI is on top rather than the daemon's helpers moved down: `zsconf daemon` and `zsconf up` run
the daemon in-process, so the CLI must import it; nothing below imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "zsconf", "daemon", "runners", "kernels")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


MODULES = _modules()


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (no import at run time)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every module of ours `path` imports, at any depth (a name imported from a package counts
    as its submodule when one of that name exists); `runtime_only` leaves out type-only ones."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}
RUNTIME = {name: _imports(path, runtime_only=True) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    return "cli" if module.startswith("zsconf.cli") else module.split(".")[0]


ALLOWED = {
    "schemas": {"schemas"},
    "kernels": {"kernels"},
    "zsconf": {"schemas", "zsconf"},
    "daemon": {"schemas", "zsconf", "daemon"},
    "runners": {"schemas", "kernels", "runners"},
    "cli": {"schemas", "zsconf", "daemon", "cli"},
}
RUNNERS_MAY_USE = ("zsconf.state",)  # the gateway's keys and usage


def test_imports_point_one_way() -> None:
    wrong = []
    for module, deps in sorted(GRAPH.items()):
        layer = _layer(module)
        for dep in sorted(deps):
            if layer == "runners" and dep.startswith(RUNNERS_MAY_USE):
                continue
            if _layer(dep) not in ALLOWED[layer]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "imports pointing the wrong way:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over module -> module imports made at run time
    (a type-only import under TYPE_CHECKING is how two modules name each other's types)."""

    def resolve(dep: str) -> str | None:
        while dep and dep not in MODULES:
            dep = dep.rpartition(".")[0]
        return dep or None

    graph = {m: {r for d in deps if (r := resolve(d)) and r != m} for m, deps in RUNTIME.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_function_level_imports() -> None:
    """The rule must be able to fail: a lazy import inside a function is an import too."""
    assert "zsconf.executors" in GRAPH["zsconf.engine.apply"]  # imported inside apply_plan
    assert "daemon.main" in GRAPH["zsconf.cli.up_cmds"]  # the CLI on top, inside `up`
