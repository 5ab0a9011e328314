"""Rate limits: exact sliding windows (requests and tokens per minute, QPS) kept in memory.

Called by the request handlers (`Limiter.admit` before forwarding, `Limiter.settle` with the
actual completion tokens afterwards). Window semantics, documented for users:

- rpm: a request is admitted when fewer than `rpm` requests were admitted in the last 60 s
  (sliding log of admission times); otherwise 429 with Retry-After = seconds until the oldest
  one leaves the window (rounded up).
- tpm: a request is charged its prompt estimate when admitted (`checks.estimate_tokens`: ~4
  ASCII characters or one CJK character a token), and when it ends the charge becomes what the
  server counted: its prompt plus completion tokens (usage). A request is admitted when the
  tokens charged in the last 60 s plus its estimate stay within `tpm`: once calls have ended, only
  real counts decide, so a key overruns `tpm` by at most the calls in flight.
- ipm (text-to-image calls): images per minute, a sliding log like rpm where a request counts
  its `n` images; refused with 700006 (key) or 700007 (model). An image call is not charged
  tokens (tpm), and a text call is not checked against ipm. A request for more images than the
  limit itself could never pass: 400/500002 naming `n`.
- qps (deployment): sliding window of max(1 s, 1/qps); limit floor(qps * window) requests;
  refused with 700004 MODEL_RPM_RATELIMITING (the table has no separate QPS code).
- Refused requests are not charged. State is per gateway process (one gateway per stack).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from runners.gateway.errors import Code, PlatformError

if TYPE_CHECKING:
    from runners.gateway.config import Deployment, Group

__all__ = ["Limiter", "Window"]

MINUTE = 60.0


class Window:
    """Sliding log of [time, amount] entries; `total` is the sum inside the window."""

    __slots__ = ("entries", "span", "total")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[list[float]] = deque()
        self.total = 0.0

    def expire(self, now: float) -> None:
        cut = now - self.span
        entries = self.entries
        while entries and entries[0][0] <= cut:
            self.total -= entries.popleft()[1]

    def retry_after(self, now: float, need: float, limit: float) -> int:
        """Seconds until `need` more fits under `limit` (entries leave in order)."""
        free = limit - self.total
        for ts, amount in self.entries:
            free += amount
            if free >= need:
                return max(1, math.ceil(ts + self.span - now))
        return max(1, math.ceil(self.span))

    def add(self, now: float, amount: float) -> list[float]:
        entry = [now, amount]
        self.entries.append(entry)
        self.total += amount
        return entry


class Limiter:
    def __init__(self) -> None:
        self._windows: dict[tuple, Window] = {}

    def _w(self, key: tuple, span: float) -> Window:
        w = self._windows.get(key)
        if w is None or w.span != span:
            w = self._windows[key] = Window(span)
        return w

    def admit(
        self,
        now: float,
        key_id: str,
        group: Group,
        dep: Deployment,
        model: str,
        prompt_tokens: int,
        images: int = 0,
    ) -> list[list[float]]:
        """Check every limit of the key's group (per key, per model) and the deployment's QPS,
        then charge them all (all or nothing). Returns the token entries `settle` corrects.
        `images` > 0: a text-to-image call, checked against ipm instead of tpm."""
        key_rpm, key_tpm, key_ipm = group.key_rpm, group.key_tpm, group.key_ipm
        model_rpm, model_tpm, model_ipm = group.model_limits.get(model, (None, None, None))
        if images:
            key_tpm = model_tpm = None
        else:
            key_ipm = model_ipm = None
        group_key = (group.tenant, group.name)
        qps_limit = dep.qps_limit
        checks = []
        if key_rpm:
            w = self._w(("kr", key_id), MINUTE)
            w.expire(now)
            if w.total + 1 > key_rpm:
                raise PlatformError(
                    Code.AK_RPM_RATELIMITING,
                    f"requests per minute over the key's limit ({key_rpm})",
                    w.retry_after(now, 1, key_rpm),
                )
            checks.append((w, 1))
        if key_tpm:
            w = self._w(("kt", key_id), MINUTE)
            w.expire(now)
            if w.total + prompt_tokens > key_tpm:
                raise PlatformError(
                    Code.AK_TPM_RATELIMITING,
                    f"tokens per minute over the key's limit ({key_tpm})",
                    w.retry_after(now, prompt_tokens, key_tpm),
                )
            checks.append((w, 0))
        if model_rpm:
            w = self._w(("mr", group_key, model), MINUTE)
            w.expire(now)
            if w.total + 1 > model_rpm:
                raise PlatformError(
                    Code.MODEL_RPM_RATELIMITING,
                    f"requests per minute over the limit of model {model!r} ({model_rpm})",
                    w.retry_after(now, 1, model_rpm),
                )
            checks.append((w, 1))
        if model_tpm:
            w = self._w(("mt", group_key, model), MINUTE)
            w.expire(now)
            if w.total + prompt_tokens > model_tpm:
                raise PlatformError(
                    Code.MODEL_TPM_RATELIMITING,
                    f"tokens per minute over the limit of model {model!r} ({model_tpm})",
                    w.retry_after(now, prompt_tokens, model_tpm),
                )
            checks.append((w, 0))
        for limit, whose in ((key_ipm, "the key's limit"), (model_ipm, f"the limit of model {model!r}")):
            if limit and images > limit:  # could never be admitted: a bad request, not a wait
                raise PlatformError(
                    Code.PARAM_ERROR, f"n: {images} images is more than {whose} of {limit} images per minute"
                )
        if key_ipm:
            w = self._w(("ki", key_id), MINUTE)
            w.expire(now)
            if w.total + images > key_ipm:
                raise PlatformError(
                    Code.AK_IPM_RATELIMITING,
                    f"images per minute over the key's limit ({key_ipm})",
                    w.retry_after(now, images, key_ipm),
                )
            checks.append((w, images))
        if model_ipm:
            w = self._w(("mi", group_key, model), MINUTE)
            w.expire(now)
            if w.total + images > model_ipm:
                raise PlatformError(
                    Code.MODEL_IPM_RATELIMITING,
                    f"images per minute over the limit of model {model!r} ({model_ipm})",
                    w.retry_after(now, images, model_ipm),
                )
            checks.append((w, images))
        if qps_limit:
            w = self._w(("q", dep.tenant, dep.name), dep.qps_window)
            w.expire(now)
            if w.total + 1 > qps_limit:
                raise PlatformError(
                    Code.MODEL_RPM_RATELIMITING,
                    f"model {model!r} is over its QPS limit",
                    w.retry_after(now, 1, qps_limit),
                )
            checks.append((w, 1))
        token_entries = []
        for w, count in checks:  # count: requests or images charged; 0 = the token estimate
            if count:
                w.add(now, count)
            else:
                token_entries.append((w, w.add(now, prompt_tokens)))
        return token_entries  # type: ignore[return-value]

    @staticmethod
    def settle(token_entries: list, now: float, correction: int) -> None:
        """Add `correction` (real prompt + completion tokens minus the estimate charged at
        admission; negative when the estimate was high) to the token windows the request was
        admitted to, while its entry is still inside the window (an expired one is gone)."""
        if not correction:
            return
        for w, entry in token_entries:
            w.expire(now)
            if entry[0] > now - w.span:
                entry[1] += correction
                w.total += correction
