"""`zsconf keys create|list|revoke|rotate|ban GROUP`: API keys of a service group.

Registered by `zsconf.cli.main`. Opens the stack's state store (`--stack DIR`, default `.`, or
ZSCONF_STATE_URL). A new secret is printed once and never again; `list` shows id, prefix, created and
status only. The gateway sees changes within about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

keys_app = typer.Typer(help="API keys of service groups (shown once, stored hashed).", no_args_is_help=True)

StackOpt = Annotated[Path, typer.Option("--stack", "-C", help="stack directory (its .zsconf/state.db)")]
GroupArg = Annotated[str, typer.Argument(help="service group: TENANT/GROUP, or GROUP when unambiguous")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _open(stack: Path) -> Any:
    from zsconf.state import open_store

    return open_store(stack_dir=stack)


def _status(k: Any) -> str:
    return "revoked" if k.revoked_at is not None else "banned" if k.banned else "active"


def _show_secret(secret: str, row: Any, as_json: bool, revoked: list[str] | None = None) -> None:
    from zsconf.cli.output import console, print_json

    if as_json:
        out = {"id": row.id, "tenant": row.tenant, "group": row.group, "prefix": row.prefix, "secret": secret}
        if revoked is not None:
            out["revoked"] = revoked
        print_json(out)
        return
    c = console()
    if revoked:
        c.print(f"revoked {', '.join(revoked)}", markup=False)
    c.print(f"created key {row.id} for {row.tenant}/{row.group}", markup=False)
    c.print(secret, markup=False, highlight=False)
    c.print("This secret is shown once: store it now; zsconf keeps only its hash.", markup=False)


def create(group: GroupArg, stack: StackOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Create a key (at most 5 per group) and print its secret once."""
    from zsconf.keys import create_key, resolve_group

    store = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        secret, row = create_key(store, tenant, name)
    finally:
        store.close()
    _show_secret(secret, row, as_json)


def list_keys(group: GroupArg, stack: StackOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List the group's keys: id, prefix, created, status (never the secret)."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import resolve_group

    store = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        rows = sorted(store.api_keys(tenant=tenant, group=name), key=lambda k: k.created_at)
    finally:
        store.close()
    data = [
        {
            "id": k.id,
            "prefix": k.prefix + "…",
            "created": k.created_at.isoformat(timespec="seconds"),
            "status": _status(k),
        }
        for k in rows
    ]
    if as_json:
        print_json(data)
        return
    c = console()
    c.print(f"{'ID':<16} {'PREFIX':<12} {'CREATED':<26} STATUS", markup=False)
    for d in data:
        c.print(f"{d['id']:<16} {d['prefix']:<12} {d['created']:<26} {d['status']}", markup=False)
    if not data:
        c.print(f"no keys for {tenant}/{name}", markup=False)


def revoke(
    group: GroupArg,
    key_id: Annotated[str | None, typer.Argument(help="key id (ak-...); all when omitted")] = None,
    stack: StackOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Revoke one key, or every active key of the group."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import resolve_group, revoke_keys

    store = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        ids = revoke_keys(store, tenant, name, key_id)
    finally:
        store.close()
    if as_json:
        print_json({"revoked": ids})
    else:
        console().print(f"revoked {len(ids)} key(s): {', '.join(ids) or '-'}", markup=False)


def rotate(
    group: GroupArg,
    key_id: Annotated[str | None, typer.Argument(help="key id to replace; all when omitted")] = None,
    stack: StackOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key (or all) and create a new one; prints the new secret once."""
    from zsconf.keys import resolve_group, rotate_key

    store = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        secret, row, revoked = rotate_key(store, tenant, name, key_id)
    finally:
        store.close()
    _show_secret(secret, row, as_json, revoked)


def ban(
    group: GroupArg,
    key_id: Annotated[str, typer.Argument(help="key id (ak-...)")],
    stack: StackOpt = Path("."),
    unban: Annotated[bool, typer.Option("--unban", help="lift the ban")] = False,
) -> None:
    """Ban a key (calls answer 700003 AK_BANNED) or lift the ban."""
    from zsconf.cli.output import console
    from zsconf.keys import resolve_group, set_banned

    store = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        set_banned(store, tenant, name, key_id, not unban)
    finally:
        store.close()
    console().print(f"{'unbanned' if unban else 'banned'} {key_id}", markup=False)


keys_app.command("create")(create)
keys_app.command("list")(list_keys)
keys_app.command("revoke")(revoke)
keys_app.command("rotate")(rotate)
keys_app.command("ban")(ban)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
