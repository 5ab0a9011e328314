"""API key secrets: generation, hashing, and keeping a new one until it has been shown.

Called by the `zsconf keys` commands and by the engine when it applies a service group (the
management functions below take an open `zsconf.state.Store`; SQLModel is imported inside them).
The state store keeps only a key's sha256 and a display prefix; the gateway hashes the bearer
token of each request with `hash_key` and looks it up.

A crash must not lose a key a person was promised, so a new secret is written to
`<stack>/.zsconf/unshown-keys/<key id>.json` (mode 0600) *before* its hash is stored, and stays
there until a command has printed it (`unshown_keys`, then `forget_keys` once printed): apply, up
and `zsconf keys create|rotate|unshown` print it. A secret sits on disk in clear only in that
window; a file whose key never reached the store, or was revoked since, is deleted unread.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zsconf.errors import StateError

if TYPE_CHECKING:
    from zsconf.state import ApiKey, Store

__all__ = [
    "KEY_PREFIX",
    "MAX_KEYS_PER_GROUP",
    "PREFIX_LEN",
    "NewKey",
    "active_keys",
    "create_key",
    "forget_keys",
    "generate_key",
    "hash_key",
    "known_groups",
    "new_key_id",
    "resolve_group",
    "revoke_keys",
    "rotate_key",
    "set_banned",
    "unshown_keys",
]

KEY_PREFIX = "zs-"
PREFIX_LEN = 10  # characters of the secret kept for display


def hash_key(secret: str) -> str:
    """sha256 hex of the full secret (what the `key_hash` column holds)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_id() -> str:
    """Public key id: "ak-" + 12 hex characters."""
    return "ak-" + secrets.token_hex(6)


def generate_key() -> tuple[str, str, str, str]:
    """A fresh key: (secret, key_id, prefix, sha256). Secret = "zs-" + 40 url-safe characters."""
    secret = KEY_PREFIX + secrets.token_urlsafe(30)[:40]
    return secret, new_key_id(), secret[:PREFIX_LEN], hash_key(secret)


# -- service-group key management (the CLI and the engine call these) --------------------------
MAX_KEYS_PER_GROUP = 5  # the studio manual: at most 5 keys


def known_groups(store: Store) -> set[tuple[str, str]]:
    """(tenant, group) pairs the state knows: applied service groups and groups with keys."""
    from sqlmodel import select

    from zsconf.state import ApiKey, ResourceRow

    with store.session() as s:
        rows = s.exec(select(ResourceRow).where(ResourceRow.kind == "service_group")).all()
        groups = {(r.tenant or "", r.name) for r in rows}
        groups |= {(t, g) for t, g in s.exec(select(ApiKey.tenant, ApiKey.group)).all()}
    return groups


def resolve_group(store: Store, ref: str) -> tuple[str, str]:
    """(tenant, group) from `service_group/tenant/group` (as the CLI prints it), `tenant/group`,
    or `group` when exactly one tenant has a group of that name."""
    from schemas.stack import parse_reference

    try:
        tenant, group = parse_reference(ref, "service_group")
    except ValueError as exc:
        raise StateError(f"bad service group: {exc}") from None
    groups = known_groups(store)
    known = ", ".join(sorted(f"service_group/{t}/{g}" for t, g in groups)) or "none"
    if tenant is not None:
        if (tenant, group) not in groups:
            raise StateError(f"no service group {tenant}/{group} in the state (known: {known})")
        return tenant, group
    matches = sorted(t for t, g in groups if g == group)
    if not matches:
        raise StateError(f"no service group named {group!r} in the state (known: {known})")
    if len(matches) > 1:
        raise StateError(
            f"service group {group!r} is ambiguous: {', '.join(f'service_group/{t}/{group}' for t in matches)}"
        )
    return matches[0], group


def active_keys(store: Store, tenant: str, group: str) -> list[ApiKey]:
    return [k for k in store.api_keys(tenant=tenant, group=group) if k.revoked_at is None]


@dataclass(frozen=True)
class NewKey:
    """A key created and not shown yet."""

    address: str  # service_group/TENANT/GROUP
    key_id: str
    secret: str


_UNSHOWN = Path(".zsconf") / "unshown-keys"
_ORPHAN_AFTER_S = 60.0  # a file whose key is not in the store yet may be a create in progress


def create_key(store: Store, tenant: str, group: str, stack_dir: Path | None = None) -> tuple[str, ApiKey]:
    """A new key for the group: (secret, row). The store keeps only its hash. With `stack_dir`
    the secret is first kept in the stack's unshown-keys folder (see the module docstring)."""
    from zsconf.privfile import write_private
    from zsconf.state import ApiKey

    if len(active_keys(store, tenant, group)) >= MAX_KEYS_PER_GROUP:
        raise StateError(
            f"service group {tenant}/{group} already has {MAX_KEYS_PER_GROUP} keys (the most allowed); "
            "revoke or rotate one"
        )
    secret, key_id, prefix, digest = generate_key()
    if stack_dir is not None:
        new = NewKey(f"service_group/{tenant}/{group}", key_id, secret)
        write_private(Path(stack_dir) / _UNSHOWN / f"{key_id}.json", json.dumps(asdict(new)))
    row = store.add_api_key(ApiKey(id=key_id, tenant=tenant, group=group, key_hash=digest, prefix=prefix))
    return secret, row


def unshown_keys(store: Store, stack_dir: Path) -> list[NewKey]:
    """Keys created for this stack and not shown yet, oldest first."""
    folder = Path(stack_dir) / _UNSHOWN
    if not folder.is_dir():
        return []
    active = {k.id for k in store.api_keys() if k.revoked_at is None}
    out: list[tuple[float, NewKey]] = []
    for path in folder.glob("ak-*.json"):
        try:
            age = time.time() - path.stat().st_mtime
            key = NewKey(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if key.key_id in active:
            out.append((-age, key))
        elif age > _ORPHAN_AFTER_S:  # never stored (a crash before its row) or revoked since
            path.unlink(missing_ok=True)
    return [k for _, k in sorted(out, key=lambda t: t[0])]


def forget_keys(stack_dir: Path, keys: Iterable[NewKey]) -> None:
    """Delete the kept secrets of keys that have now been shown."""
    for key in keys:
        (Path(stack_dir) / _UNSHOWN / f"{key.key_id}.json").unlink(missing_ok=True)


def revoke_keys(store: Store, tenant: str, group: str, key_id: str | None = None) -> list[str]:
    """Revoke one key (by id) or every active key of the group; returns the ids revoked."""
    from zsconf.state import ApiKey
    from zsconf.state.models import utcnow

    targets = [k for k in active_keys(store, tenant, group) if key_id is None or k.id == key_id]
    if key_id is not None and not targets:
        raise StateError(f"no active key {key_id!r} in service group {tenant}/{group}")
    with store.session() as s:
        for k in targets:
            row = s.get(ApiKey, k.id)
            if row is not None:
                row.revoked_at = utcnow()
                s.add(row)
        s.commit()
    return [k.id for k in targets]


def rotate_key(
    store: Store, tenant: str, group: str, key_id: str | None = None, stack_dir: Path | None = None
) -> tuple[str, ApiKey, list[str]]:
    """Revoke one key (or all) and create a new one: (secret, new row, revoked ids)."""
    revoked = revoke_keys(store, tenant, group, key_id)
    secret, row = create_key(store, tenant, group, stack_dir)
    return secret, row, revoked


def set_banned(store: Store, tenant: str, group: str, key_id: str, banned: bool = True) -> None:
    from zsconf.state import ApiKey

    with store.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None or (row.tenant, row.group) != (tenant, group):
            raise StateError(f"no key {key_id!r} in service group {tenant}/{group}")
        row.banned = banned
        s.add(row)
        s.commit()
