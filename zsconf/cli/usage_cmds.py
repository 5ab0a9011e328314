"""`zsconf usage [--since 24h] [--group G] [--model M] [--csv FILE]`: what the gateway metered.

Registered by `zsconf.cli.main`; reads the UsageRecord table of the stack's state store and prints
calls, failures by code and message with their share, tokens, images, and latency percentiles
(total, per model, per service group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zsconf.cli.stackdir import StackDir, stack_dir

__all__ = ["register"]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _print_block(title: str, b: dict[str, Any], indent: str = "") -> None:
    from zsconf.cli.output import console

    c = console()
    lat = b["latency_ms"]
    images = ""
    if b["images"]:
        sizes = ", ".join(f"{size} ×{n}" for size, n in b["image_sizes"].items())
        images = f"images {b['images']} ({sizes}; {b['image_steps']} steps), "
    c.print(
        f"{indent}{title}: {b['calls']} calls, {b['failed']} failed ({b['failure_share']:.1%}), "
        f"tokens {b['total_tokens']} (prompt {b['prompt_tokens']}, completion {b['completion_tokens']}), "
        f"{images}latency ms p50 {_fmt(lat['p50'])} p90 {_fmt(lat['p90'])} p99 {_fmt(lat['p99'])}",
        markup=False,
        highlight=False,
    )
    for f in b["failures"]:
        c.print(
            f"{indent}  {f['code']} {f['type']}: {f['count']} ({f['share']:.1%}) {f['message']}",
            markup=False,
            highlight=False,
        )


def usage(
    since: Annotated[str, typer.Option("--since", help="window: 30m, 24h, 7d")] = "24h",
    group: Annotated[
        str | None,
        typer.Option("--group", help="service group: service_group/TENANT/GROUP, TENANT/GROUP or GROUP"),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="model: deployment/TENANT/NAME or the deployment's name")
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="also export the records to this CSV file")
    ] = None,
    stack: StackDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Summarise gateway usage: calls, failures (code, message, share), tokens, images (by size, with
    their denoising steps), latency p50/p90/p99."""
    from schemas.common import parse_duration
    from zsconf.cli.output import console, print_json
    from zsconf.errors import ZsconfError
    from zsconf.state import open_store
    from zsconf.usage import query_usage, summarize, write_csv

    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise ZsconfError(f"--since {since!r}: {exc}") from None
    from schemas.stack import parse_reference

    tenant = None
    try:
        if group:
            tenant, group = parse_reference(group, "service_group")
        if model:
            model_tenant, model = parse_reference(model, "deployment")
            tenant = tenant or model_tenant
    except ValueError as exc:
        raise ZsconfError(str(exc)) from None
    store = open_store(stack_dir=stack_dir(stack, state_only=True), create=False)
    try:
        records = query_usage(store, seconds, group=group, model=model, tenant=tenant)
    finally:
        store.close()
    summary = summarize(records)
    if csv_path is not None:
        n = write_csv(records, csv_path)
        if not as_json:
            console().print(f"wrote {n} records to {csv_path}", markup=False)
    if as_json:
        print_json({"since_s": seconds, **summary})
        return
    _print_block(f"last {since}", summary["total"])
    for name, b in summary["models"].items():
        _print_block(f"model {name}", b, "  ")
    for name, b in summary["groups"].items():
        _print_block(f"group {name}", b, "  ")


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
