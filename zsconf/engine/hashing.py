"""Content hashes with lineage: a resource's hash covers its spec, its input files and the hashes
of everything it consumes. Called by `zsconf.engine.plan`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "json_hash", "lineage_hashes", "secrets_digest"]

_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def json_hash(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def secrets_digest(leaves: list[tuple[str, str]], key: str) -> str:
    """HMAC-SHA256, keyed with the state store's own key, of the secret-bearing fields of a spec:
    the state keeps this and the masked spec, so a rotated secret is seen without storing it (nor
    an unkeyed hash a dictionary could reverse). "" when the spec holds no secret."""
    if not leaves:
        return ""
    body = json.dumps(sorted(leaves), ensure_ascii=False, separators=(",", ":"))
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, cached by (path, mtime_ns, size): the daemon plans repeatedly."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = (str(path), st.st_mtime_ns, st.st_size)
    cached = _FILE_CACHE.get(key)
    if cached is None:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:  # a directory, unreadable: what validate reports, not a crash here
            return "missing"
        cached = _FILE_CACHE[key] = h.hexdigest()
    return cached


def dir_digest(path: Path) -> str:
    """Cheap fingerprint of a model folder: names, sizes and mtimes of its files."""
    if not path.is_dir():
        return "missing"
    items = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            p = Path(root) / name
            st = p.stat()
            items.append((str(p.relative_to(path)), st.st_size))
    return json_hash(sorted(items))


def lineage_hashes(
    order: list[str],
    specs: dict[str, dict[str, Any]],
    edges: dict[str, set[str]],
    inputs: dict[str, str],
) -> dict[str, str]:
    """Hash of each address = H(spec JSON, own input digest, hashes of its dependencies).

    `order` is topological, so each dependency's hash is known before it is used. Tenants are
    left out of dependency hashes (a tenant quota change must not rerun jobs), and a service group
    takes none (it routes to deployments by name; a new deployment generation changes nothing in it).
    """
    out: dict[str, str] = {}
    for addr in order:
        deps = (
            []
            if addr.startswith("service_group/")
            else sorted(d for d in edges.get(addr, ()) if not d.startswith("tenant/"))
        )
        out[addr] = json_hash([specs[addr], inputs.get(addr, ""), [(d, out.get(d, "")) for d in deps]])
    return out
