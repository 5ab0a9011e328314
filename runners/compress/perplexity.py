"""Perplexity of a causal LM on a list of texts (token-weighted mean NLL, exponentiated).

Called by `runners.compress.run` before and after compression on the same held-out texts, and by
bench/compress.py.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["perplexity"]


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> float:
    """exp(total NLL / total predicted tokens), each text truncated to `max_length` tokens;
    texts shorter than 2 tokens predict nothing and are skipped."""
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                continue
            ids = ids.to(device)
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1  # labels are shifted inside the model: n predictions
            total_nll += float(out.loss) * n
            total_tokens += n
    if total_tokens == 0:
        raise ValueError("no held-out text has 2 or more tokens: cannot compute perplexity")
    return math.exp(total_nll / total_tokens)
