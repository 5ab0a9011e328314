"""Training data: dataset files -> chat template -> token ids + labels, packing, and the sampler.

Used by `runners.train` (setup) and `bench/train.py`. SFT labels are -100 except the assistant turns
(their content and end-of-turn token); continued pre-training trains on every token, packed into
`sequence_length` blocks separated by EOS. The sampler is a pure function of (seed, position) so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from runners.runfiles import UserError
from runners.samples import chat_text, read_samples

__all__ = [
    "IGNORE",
    "Example",
    "batch_positions",
    "collate",
    "load_examples",
    "tokenize_sft",
]

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


# Turns the model writes: trained on. `function_call` is the assistant calling a tool (ShareGPT).
_TRAINED_ROLES = ("assistant", "function_call")


def tokenize_sft(
    tokenizer: Any, messages: list[dict[str, str]], seq_len: int, tools: list[dict[str, Any]] | None = None
) -> Example:
    """Render `messages` (and `tools`, for templates that describe them) with the chat template;
    label only the assistant's spans. Spans are found by rendering prefixes (prompt + generation
    header vs. prompt + answer), so any template works."""
    kw: dict[str, Any] = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] not in _TRAINED_ROLES:
            continue
        start = len(
            tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True, **kw)
        )
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, **kw))
        spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        tok if any(s <= a < e for s, e in spans) else IGNORE
        for tok, (a, _b) in zip(ids, enc["offset_mapping"], strict=False)
    ]
    return Example(ids[:seq_len], labels[:seq_len])


def _pack(tokenizer: Any, texts: list[str], seq_len: int) -> list[Example]:
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    blocks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    return [Example(b, list(b)) for b in blocks if len(b) > 1]


def load_examples(tokenizer: Any, path: str, fmt: str, method: str, seq_len: int) -> list[Example]:
    """Every training example of one dataset file (tokenized up front: datasets here are small)."""
    samples = read_samples(path, fmt)
    if not samples:
        raise UserError(f"{path}: the dataset has no samples")
    if method == "continued_pretrain":
        return _pack(tokenizer, [chat_text(s, tokenizer) for s in samples], seq_len)
    out = []
    for n, s in enumerate(samples, 1):
        if "messages" not in s:
            raise UserError(
                f"{path}: sample {n}: {method} needs conversations, got plain text (use continued_pretrain)"
            )
        ex = tokenize_sft(tokenizer, s["messages"], seq_len, s.get("tools"))
        if all(x == IGNORE for x in ex.labels):
            continue  # truncation removed every assistant token: nothing to learn
        out.append(ex)
    if not out:
        raise UserError(f"{path}: no sample keeps an assistant token within sequence_length={seq_len}")
    return out


def batch_positions(step: int, n: int, seed: int, global_batch: int) -> list[int]:
    """Sample indices of global step `step` (0-based): a stream over epochs, each epoch a fresh
    permutation seeded by (seed, epoch). Pure: resuming at `step` replays the same batches."""
    out = []
    for p in range(step * global_batch, (step + 1) * global_batch):
        epoch, i = divmod(p, n)
        out.append(_perm(seed, epoch, n)[i])
    return out


@lru_cache(maxsize=4)
def _perm(seed: int, epoch: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[r, : len(e.labels)] = torch.tensor(e.labels)
        mask[r, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
