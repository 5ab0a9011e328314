"""`zsconf keys create|list|revoke|rotate|ban|unshown GROUP`: API keys of a service group.

Registered by `zsconf.cli.main`. Opens the stack's state store (`-C DIR`, default the stack that
contains the working directory, or ZSCONF_STATE_URL). A new secret is printed once and never again;
`list` shows id, prefix, created and status only. The gateway sees changes within about a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from zsconf.cli.stackdir import StackDir, stack_dir

__all__ = ["register"]

keys_app = typer.Typer(help="API keys of service groups (shown once, stored hashed).", no_args_is_help=True)

GroupArg = Annotated[
    str,
    typer.Argument(
        help="the service group: service_group/TENANT/GROUP (as zsconf prints it), TENANT/GROUP, or GROUP "
        "when one tenant has it",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="print the secret alone (for `export ZSCONF_KEY=$(...)`)")
]


def _open(stack: Path | None) -> tuple[Any, Path]:
    """The stack's state store; none is created (a key needs a service group applied first)."""
    from zsconf.state import open_store

    directory = stack_dir(stack, state_only=True)
    return open_store(stack_dir=directory, create=False), directory


def _status(k: Any) -> str:
    return "revoked" if k.revoked_at is not None else "banned" if k.banned else "active"


def _show_secret(
    secret: str,
    row: Any,
    directory: Path,
    as_json: bool,
    revoked: list[str] | None = None,
    quiet: bool = False,
) -> None:
    """Print a new key once, then forget the copy kept until it was shown (`zsconf.keys`)."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import NewKey, forget_keys

    if quiet:  # the secret alone, for `export ZSCONF_KEY=$(zsconf keys create GROUP --quiet)`
        sys.stdout.write(secret + "\n")
    elif as_json:
        out = {"id": row.id, "tenant": row.tenant, "group": row.group, "prefix": row.prefix, "secret": secret}
        if revoked is not None:
            out["revoked"] = revoked
        print_json(out)
    else:
        c = console()
        if revoked:
            c.print(f"revoked {', '.join(revoked)}", markup=False)
        c.print(f"created key {row.id} for {row.tenant}/{row.group}", markup=False)
        c.print(secret, markup=False, highlight=False)
        c.print("This secret is shown once: store it now; zsconf keeps only its hash.", markup=False)
    sys.stdout.flush()
    forget_keys(directory, [NewKey(f"service_group/{row.tenant}/{row.group}", row.id, secret)])


def create(
    group: GroupArg, stack: StackDir = None, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """Create a key (at most 5 per group) and print its secret once."""
    from zsconf.keys import create_key, resolve_group

    store, directory = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        secret, row = create_key(store, tenant, name, directory)
    finally:
        store.close()
    _show_secret(secret, row, directory, as_json, quiet=quiet)


def list_keys(group: GroupArg, stack: StackDir = None, as_json: JsonOpt = False) -> None:
    """List the group's keys: id, prefix, created, status (never the secret)."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import resolve_group

    store, _ = _open(stack)
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
    stack: StackDir = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one key, or every active key of the group."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import resolve_group, revoke_keys

    store, _ = _open(stack)
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
    stack: StackDir = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Revoke a key (or all) and create a new one; prints the new secret once."""
    from zsconf.keys import resolve_group, rotate_key

    store, directory = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        secret, row, revoked = rotate_key(store, tenant, name, key_id, directory)
    finally:
        store.close()
    _show_secret(secret, row, directory, as_json, revoked, quiet)


def ban(
    group: GroupArg,
    key_id: Annotated[str, typer.Argument(help="key id (ak-...)")],
    stack: StackDir = None,
    unban: Annotated[bool, typer.Option("--unban", help="lift the ban")] = False,
) -> None:
    """Ban a key (calls answer 700003 AK_BANNED) or lift the ban."""
    from zsconf.cli.output import console
    from zsconf.keys import resolve_group, set_banned

    store, _ = _open(stack)
    try:
        tenant, name = resolve_group(store, group)
        set_banned(store, tenant, name, key_id, not unban)
    finally:
        store.close()
    console().print(f"{'unbanned' if unban else 'banned'} {key_id}", markup=False)


def unshown(stack: StackDir = None, as_json: JsonOpt = False) -> None:
    """Print the keys apply or the daemon created that no command has shown yet (for example
    when an apply was interrupted, or the daemon applied a new `keys:` count), then forget them:
    each secret is shown once."""
    from zsconf.cli.output import console, print_json
    from zsconf.keys import forget_keys, unshown_keys
    from zsconf.render import new_keys_text

    store, directory = _open(stack)
    try:
        keys = unshown_keys(store, directory)
    finally:
        store.close()
    if as_json:
        print_json([{"address": k.address, "id": k.key_id, "secret": k.secret} for k in keys])
    elif keys:
        console().print("\n".join(new_keys_text(keys)), markup=False, highlight=False)
    else:
        console().print("No keys waiting to be shown.", markup=False)
    sys.stdout.flush()
    forget_keys(directory, keys)


keys_app.command("create")(create)
keys_app.command("unshown")(unshown)
keys_app.command("list")(list_keys)
keys_app.command("revoke")(revoke)
keys_app.command("rotate")(rotate)
keys_app.command("ban")(ban)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
