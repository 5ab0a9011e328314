"""Files that may hold a secret (a runner's spec with resolved `${secret:...}` values, the
gateway's internal key, a key not yet shown): written whole or not at all, readable by the owner
only. Called by the engine (runner specs, gateway files, new keys) and the job supervisor."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["create_private", "write_private"]


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename, fsynced) with mode 0600."""
    path = Path(path)
    tmp = _temp(path, text)
    os.replace(tmp, path)


def create_private(path: Path, text: str) -> bool:
    """Like `write_private`, but only when `path` does not exist yet: of several threads or
    processes creating it at once, exactly one wins (True); the others leave it alone (False)."""
    tmp = _temp(Path(path), text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _temp(path: Path, text: str) -> Path:
    """A complete, fsynced 0600 file beside `path` under a name no other writer uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp
