"""Images answered with `response_format: url`: PNG files the gateway serves for a limited time.

Called by the proxy (`save`, after the model server answered in base64) and by the app's
`GET /v1/images/files/NAME.png` (`path`) and its sweep task. A file lives at
`ROOT/KEY_ID/TOKEN.png`: only the key that made it can fetch it (behind the same auth as every
call), the token is unguessable, and the file's age decides its expiry, so images made before a
gateway restart are still served (and still swept) after it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = ["ImageFiles"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{16,64}\.png$")


class ImageFiles:
    def __init__(self, root: Path | None, ttl_s: float = 3600.0) -> None:
        self.root = root
        self.ttl_s = ttl_s

    def _write(self, key_id: str, items: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
        if self.root is None:
            raise RuntimeError("the gateway has no folder for image files")
        folder = self.root / key_id
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for item in items:
            name = secrets.token_urlsafe(18) + ".png"
            tmp = folder / ("." + name)
            tmp.write_bytes(base64.b64decode(item["b64_json"]))
            tmp.rename(folder / name)  # a half-written file is never served
            entry = {"url": f"{base_url}/v1/images/files/{name}"}
            if "revised_prompt" in item:
                entry["revised_prompt"] = item["revised_prompt"]
            out.append(entry)
        return out

    async def save(self, key_id: str, items: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
        """Write the base64 images as files; the response's data items with their URLs."""
        return await asyncio.get_running_loop().run_in_executor(None, self._write, key_id, items, base_url)

    def path(self, key_id: str, name: str) -> Path | None:
        """The file `name` made for `key_id`, unless it is unknown, another key's or expired."""
        if self.root is None or not _NAME.match(name):
            return None
        path = self.root / key_id / name
        try:
            made = path.stat().st_mtime
        except OSError:
            return None
        return path if time.time() - made < self.ttl_s else None

    def sweep(self) -> int:
        """Delete the expired files; how many."""
        if self.root is None or not self.root.is_dir():
            return 0
        cut = time.time() - self.ttl_s
        gone = 0
        for folder in self.root.iterdir():
            for f in folder.glob("*.png"):
                try:
                    if f.stat().st_mtime < cut:
                        f.unlink()
                        gone += 1
                except OSError:
                    continue
        return gone
