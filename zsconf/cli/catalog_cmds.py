"""`zsconf catalog models|flavors|recipes [--json]`: what a stack can name.

Registered by `zsconf.cli.main`. Reads `zsconf.catalog.load_catalog()` and the recipe presets shipped
under `recipes/` (every YAML file outside `recipes/catalog/`, described by its first comment line).
Aligned columns on a terminal, tab-separated plain text when piped, JSON with --json.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

__all__ = ["list_recipes", "register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _range(value: Any) -> str:
    if not value:
        return "-"
    lo, hi = value
    return f"{lo:g}-{hi:g}" if lo != hi else f"{lo:g}"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Aligned columns on a terminal (never cut: a wide table wraps as whole lines), tab-separated
    values when piped (`--json` for programs)."""
    out = sys.stdout
    if not out.isatty():
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(row) + "\n")
        return
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    out.write(f"{title}\n")
    for i, row in enumerate([columns, *rows]):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        out.write((f"\033[1m{line}\033[0m" if i == 0 else line) + "\n")


def list_recipes() -> list[dict[str, str]]:
    """Every preset YAML under recipes/ except the catalog: {"name", "path", "description"}."""
    from zsconf.catalog import catalog_dir

    root = catalog_dir().parent
    found: list[dict[str, str]] = []
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if rel.parts[0] == "catalog":
            continue
        description = ""
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#"):
                    description = line.lstrip("#").strip()
                    break
                if line.strip():
                    break
        found.append(
            {"name": rel.with_suffix("").as_posix(), "path": rel.as_posix(), "description": description}
        )
    return found


def models(as_json: JsonOpt = False) -> None:
    """Base models: task, architecture, size, fine-tune throughput, compression, QPS per instance."""
    from zsconf.catalog import load_catalog
    from zsconf.cli.output import print_json

    cat = load_catalog()
    if as_json:
        print_json({name: m.model_dump(mode="json", exclude_none=True) for name, m in cat.models.items()})
        return
    rows = []
    for name, m in cat.models.items():
        ft = m.finetune
        rows.append(
            [
                name,
                m.task,
                m.architecture,
                f"{m.params_b:g}B",
                _range(ft.get("full")),
                _range(ft.get("lora")),
                _range(ft.get("continued_pretrain")),
                ",".join(m.compression) or "-",
                f"{m.qps_per_instance:g}",
                str(m.max_model_len),
                ",".join(m.dataset_formats) or "-",
                m.checkpoint_format or "-",
            ]
        )
    cols = ["model", "task", "arch", "params", "full tok/s", "lora tok/s", "cpt tok/s", "compression", "qps/inst",
            "max len", "datasets", "checkpoint"]  # fmt: skip
    _table("Base models (tok/s per card)", cols, rows)


def flavors(as_json: JsonOpt = False) -> None:
    """Hardware flavors: device, cards, CPU, memory, prices (CNY)."""
    from zsconf.catalog import load_catalog
    from zsconf.cli.output import print_json

    cat = load_catalog()
    if as_json:
        print_json({name: f.model_dump(mode="json") for name, f in cat.flavors.items()})
        return

    def price(v: float | None) -> str:
        return "-" if v is None else f"{v:,.2f}"

    rows = [
        [
            name,
            f.device,
            f.accelerator or "-",
            str(f.cards),
            str(f.cpu),
            f"{f.memory_gb:g}",
            price(f.price_per_hour),
            price(f.price_per_month),
            f.description,
        ]
        for name, f in cat.flavors.items()
    ]
    cols = [
        "flavor",
        "device",
        "accelerator",
        "cards",
        "cpu",
        "memory GB",
        "CNY/h",
        "CNY/month",
        "description",
    ]
    _table("Flavors", cols, rows)


def recipes(as_json: JsonOpt = False) -> None:
    """Recipe presets a stack can pull in with a defaults entry (e.g. finetune/lora)."""
    from zsconf.cli.output import print_json

    found = list_recipes()
    if as_json:
        print_json(found)
        return
    _table("Recipe presets", ["recipe", "description"], [[r["name"], r["description"]] for r in found])


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Base models, hardware flavors and recipe presets shipped with zsconf.", no_args_is_help=True
    )
    group.command("models")(models)
    group.command("flavors")(flavors)
    group.command("recipes")(recipes)
    app.add_typer(group, name="catalog")
