"""Files that may hold a secret (a runner's spec with resolved `${secret:...}` values, the
gateway's internal key, a key not yet shown): written whole or not at all, readable by the owner
only. Called by the engine (runner specs, gateway files, new keys) and the job supervisor."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename, fsynced) with mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
