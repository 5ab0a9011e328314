"""Dataset samples as the chat template takes them, for every runner.

`schemas.samples` is the one reader of the dataset formats (moss, alpaca, sharegpt, csv, xlsx,
pretrain); this module turns its samples into `{"messages": [{"role", "content"}, ...], "tools":
[...]}` (tools only when the sample has them) or `{"text": ...}`. Used by runners.train (every
sample), runners.compress (calibration and held-out texts: only as many as it needs) and
runners.evaluate (prompt and expected answer). The first bad line stops the run with a UserError
naming the file and the line: a runner never trains or scores on part of a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from runners.runfiles import UserError
from schemas.samples import Conversation, DatasetError, iter_samples

__all__ = ["chat_text", "parse_tools", "read_samples", "samples"]


def parse_tools(tools: Any) -> list[dict[str, Any]]:
    """A ShareGPT `tools` value (a JSON string of a list of function schemas, or one schema) as
    the list `apply_chat_template(tools=...)` takes."""
    value = json.loads(tools) if isinstance(tools, str) else tools
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError(f"tools must be a JSON list of function schemas, got {str(tools)[:80]!r}")
    return value


def samples(path: str | Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The samples of a dataset file in file order, streaming."""
    try:
        for s in iter_samples(path, fmt):
            if not isinstance(s, Conversation):
                yield {"text": s.text}
                continue
            sample: dict[str, Any] = {
                "messages": [{"role": m.role, "content": m.content} for m in s.messages]
            }
            if s.tools:
                try:
                    sample["tools"] = parse_tools(s.tools)
                except ValueError as exc:
                    raise UserError(f"{path}: line {s.source_line}: tools: {exc}") from exc
            yield sample
    except DatasetError as exc:
        raise UserError(str(exc)) from exc


def read_samples(path: str | Path, fmt: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Every sample, or the first `limit` (then the file is read only that far)."""
    return list(islice(samples(path, fmt), limit))


def chat_text(sample: dict[str, Any], tokenizer: Any, *, generation_prompt: bool = False) -> str:
    """A sample as the text the model sees: conversations through the model's chat template (with
    their tools), plain text as it is."""
    if "text" in sample:
        return sample["text"]
    messages = sample["messages"]
    if getattr(tokenizer, "chat_template", None):
        kw: dict[str, Any] = {"tools": sample["tools"]} if sample.get("tools") else {}
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kw
        )
    return "\n".join(m["content"] for m in messages) + ("\n" if generation_prompt else "")
