"""API key secrets: generation and hashing (CONTRACTS.md section 3).

Called by the `zsconf keys` commands and by the engine when it applies a service group. The secret is
returned once to the caller and never stored: the state store keeps only its sha256 and a display
prefix. The gateway hashes the bearer token of each request with `hash_key` and looks it up.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["KEY_PREFIX", "PREFIX_LEN", "generate_key", "hash_key", "new_key_id"]

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
