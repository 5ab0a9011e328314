"""Read calibration / evaluation records from a dataset file, streaming (never the whole file).

Used by `runners.compress` (calibration and held-out perplexity texts) and `runners.evaluate`
(prompt / expected pairs). Minimal jsonl readers for alpaca, sharegpt, moss and pretrain until the
shared reader `schemas.samples.read_dataset` lands; then this module delegates to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from runners.runfiles import UserError

__all__ = ["BUILTIN_CALIBRATION", "Record", "builtin_records", "iter_records", "read_records"]

BUILTIN_CALIBRATION = Path(__file__).with_name("calibration.txt")

# ShareGPT speaker names -> chat roles.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Record:
    """One sample: chat `messages` ({role, content} dicts; the last one is the assistant's answer
    when the sample has one) or plain `text` (pretrain / built-in set)."""

    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None


def _alpaca(obj: dict) -> Record:
    prompt = str(obj.get("instruction", "")).strip()
    extra = str(obj.get("input", "") or "").strip()
    if extra:
        prompt = f"{prompt}\n{extra}" if prompt else extra
    messages = []
    if obj.get("system"):
        messages.append({"role": "system", "content": str(obj["system"])})
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": str(obj.get("output", ""))},
    ]
    return Record(messages=tuple(messages))


def _sharegpt(obj: dict) -> Record:
    turns = obj.get("conversations") or obj.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError("expected a non-empty 'conversations' (or 'messages') list")
    messages = []
    if obj.get("system"):
        messages.append({"role": "system", "content": str(obj["system"])})
    for turn in turns:
        who = turn.get("from", turn.get("role"))
        if who not in _ROLES:
            raise ValueError(f"unknown speaker {who!r} (expected human/gpt/user/assistant/system)")
        messages.append({"role": _ROLES[who], "content": str(turn.get("value", turn.get("content", "")))})
    return Record(messages=tuple(messages))


def _moss(obj: dict) -> Record:
    # MOSS: {"conversation": [{"human": ..., "assistant": ...}, ...]}
    messages = []
    for turn in obj.get("conversation") or []:
        messages.append({"role": "user", "content": str(turn.get("human", ""))})
        messages.append({"role": "assistant", "content": str(turn.get("assistant", ""))})
    if not messages:
        raise ValueError("expected a non-empty 'conversation' list")
    return Record(messages=tuple(messages))


def _pretrain(obj: dict) -> Record:
    if "text" not in obj:
        raise ValueError("expected a 'text' field")
    return Record(text=str(obj["text"]))


_PARSERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "moss": _moss, "pretrain": _pretrain}


def iter_records(path: str | Path, fmt: str) -> Iterator[Record]:
    """Yield records of a jsonl dataset one line at a time; bad lines raise UserError naming
    file and line."""
    if fmt not in _PARSERS:
        raise UserError(f"{path}: format {fmt!r} is not supported here yet (jsonl: {', '.join(_PARSERS)})")
    parse = _PARSERS[fmt]
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below; open errors named first
    except OSError as exc:
        raise UserError(f"{path}: cannot open dataset: {exc}") from exc
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
                yield parse(obj)
            except (ValueError, AttributeError, TypeError) as exc:
                raise UserError(f"{path}:{lineno}: bad {fmt} sample: {exc}") from exc


def read_records(path: str | Path, fmt: str, limit: int) -> list[Record]:
    """At most `limit` records from the start of the file (memory bounded)."""
    return list(islice(iter_records(path, fmt), limit))


def builtin_records(limit: int) -> list[Record]:
    """The bundled bilingual calibration paragraphs (one per non-blank line)."""
    lines = [ln.strip() for ln in BUILTIN_CALIBRATION.read_text(encoding="utf-8").splitlines()]
    return [Record(text=ln) for ln in lines if ln][:limit]
