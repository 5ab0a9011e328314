"""Debounced watching of a stack directory (watchdog).

Called by the reconcile loop: `StackWatcher.wait(timeout)` returns True once the stack's files
changed and then stayed quiet for the debounce period. Editors save in odd ways (write a temp file
then rename it over the original, delete then recreate, touch swap files), so any event on a
relevant path counts, the destination of a move included, and only files that can matter to a
stack are considered (YAML, datasets, secrets); the state directory `.zsconf/` and VCS folders are
ignored so the daemon's own writes never wake it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["StackWatcher"]

_RELEVANT_SUFFIXES = {".yaml", ".yml", ".jsonl", ".json", ".csv", ".xlsx", ".txt"}
_IGNORED_PARTS = {".zsconf", ".git", "__pycache__", ".venv", "node_modules"}


def _relevant(root: Path, raw: str | bytes) -> bool:
    path = Path(raw.decode() if isinstance(raw, bytes) else raw)
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if any(part in _IGNORED_PARTS for part in rel.parts):
        return False
    name = rel.name
    # Editor droppings: vim swap/backup, emacs locks, '~' backups.
    if name.startswith((".#", "#")) or name.endswith(("~", ".swp", ".swx", ".tmp")):
        return False
    return path.suffix.lower() in _RELEVANT_SUFFIXES


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: StackWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path]
        if getattr(event, "dest_path", ""):
            paths.append(event.dest_path)
        if any(_relevant(self._watcher.root, p) for p in paths):
            self._watcher._touch()


class StackWatcher:
    """Watches `root` recursively; `wait()` blocks until a debounced change or the timeout."""

    def __init__(self, root: Path, debounce_s: float = 0.2) -> None:
        self.root = root.resolve()
        self.debounce_s = debounce_s
        self._cond = threading.Condition()
        self._last_event: float | None = None
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.root), recursive=True)

    def start(self) -> StackWatcher:
        self._observer.start()
        return self

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
        with self._cond:
            self._cond.notify_all()

    def poke(self) -> None:
        """Wake `wait()` at once (used for 'sync now' requests and shutdown)."""
        with self._cond:
            self._last_event = time.monotonic() - self.debounce_s
            self._cond.notify_all()

    def _touch(self) -> None:
        with self._cond:
            self._last_event = time.monotonic()
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """True when files changed (and settled for `debounce_s`), False on timeout. A change still
        settling at the timeout is kept for the next call."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._last_event is not None and now >= self._last_event + self.debounce_s:
                    self._last_event = None
                    return True
                if now >= deadline:
                    return False
                wake = (
                    deadline
                    if self._last_event is None
                    else min(deadline, self._last_event + self.debounce_s)
                )
                self._cond.wait(wake - now)
