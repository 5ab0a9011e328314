"""Usage summaries over the UsageRecord table (what the gateway meters): calls, failures by code
and message with their share, tokens, images (by size, with their steps), latency percentiles;
CSV export.

Called by `zsconf usage` (zsconf/cli/usage_cmds.py) and usable by the daemon's status API.
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from schemas.run_gateway import ERROR_CODES

if TYPE_CHECKING:
    from zsconf.state import Store, UsageRecord

__all__ = ["percentile", "query_usage", "summarize", "write_csv"]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


def query_usage(
    store: Store,
    since_s: float | None = None,
    group: str | None = None,
    model: str | None = None,
    tenant: str | None = None,
) -> list[UsageRecord]:
    from sqlmodel import select

    from zsconf.state import UsageRecord

    q = select(UsageRecord)
    if since_s is not None:
        q = q.where(UsageRecord.ts >= time.time() - since_s)
    if group is not None:
        q = q.where(UsageRecord.group == group)
    if tenant is not None:
        q = q.where(UsageRecord.tenant == tenant)
    if model is not None:
        q = q.where(UsageRecord.model == model)
    with store.session() as s:
        return list(s.exec(q.order_by(UsageRecord.ts)).all())  # type: ignore[arg-type]


def _failed(r: Any) -> bool:
    return r.error_code is not None or r.status != 200


def _block(records: list[Any]) -> dict[str, Any]:
    calls = len(records)
    failures: dict[str, int] = {}
    for r in records:
        if _failed(r):
            code = r.error_code or str(r.status)
            failures[code] = failures.get(code, 0) + 1
    ok = [r.latency_ms for r in records if not _failed(r)]
    ok.sort()
    ttft = sorted(r.ttft_ms for r in records if r.ttft_ms is not None and not _failed(r))
    failed = sum(failures.values())
    sizes: dict[str, int] = {}
    for r in records:
        if r.images and r.size:
            sizes[r.size] = sizes.get(r.size, 0) + r.images
    return {
        "calls": calls,
        "failed": failed,
        "failure_share": failed / calls if calls else 0.0,
        "failures": [
            {
                "code": code,
                "type": ERROR_CODES.get(code, ("?", 0, ""))[0],
                "message": ERROR_CODES.get(code, ("", 0, f"HTTP {code}"))[2],
                "count": n,
                "share": n / calls,
            }
            for code, n in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in records),
        # Text-to-image calls: images made, by size (HEIGHTxWIDTH), and their denoising steps.
        "images": sum(r.images or 0 for r in records),
        "image_sizes": dict(sorted(sizes.items())),
        "image_steps": sum((r.images or 0) * (r.steps or 0) for r in records),
        "latency_ms": {f"p{q}": percentile(ok, q) for q in (50, 90, 99)},
        "ttft_ms": {f"p{q}": percentile(ttft, q) for q in (50, 90, 99)},
    }


def summarize(records: list[Any]) -> dict[str, Any]:
    """Totals, then the same block per model and per service group (tenant/group)."""
    by_model: dict[str, list[Any]] = {}
    by_group: dict[str, list[Any]] = {}
    for r in records:
        by_model.setdefault(r.model, []).append(r)
        by_group.setdefault(f"{r.tenant}/{r.group}", []).append(r)
    return {
        "total": _block(records),
        "models": {m: _block(rs) for m, rs in sorted(by_model.items())},
        "groups": {g: _block(rs) for g, rs in sorted(by_group.items())},
    }


def write_csv(records: list[Any], out: str | Path | TextIO) -> int:
    """Usage records as CSV (USAGE_COLUMNS), to a file path or an open text stream."""
    from zsconf.state import USAGE_COLUMNS

    with contextlib.ExitStack() as stack:
        f = out if not isinstance(out, str | Path) else stack.enter_context(
            open(out, "w", newline="", encoding="utf-8"))  # fmt: skip
        w = csv.writer(f)
        w.writerow(USAGE_COLUMNS)
        for r in records:
            w.writerow([getattr(r, c) for c in USAGE_COLUMNS])
    return len(records)
