"""Prometheus metrics (prometheus_client) per model and service group, served at GET /metrics.

Called by the handlers once per call (`observe`); label children are cached so a call costs a few
dictionary lookups and histogram observations.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created gauges double the output and nobody graphs them

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("zsconf_gateway_requests", "calls", ["model", "group", "status"], registry=r)
        self.errors = Counter(
            "zsconf_gateway_errors", "failed calls by code", ["model", "group", "code"], registry=r
        )
        self.tokens = Counter("zsconf_gateway_tokens", "tokens", ["model", "group", "kind"], registry=r)
        self.latency = Histogram(
            "zsconf_gateway_latency_seconds", "call latency", ["model", "group"], buckets=_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "zsconf_gateway_ttft_seconds",
            "time to first token (streams)",
            ["model", "group"],
            buckets=_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple, tuple] = {}

    def observe(
        self,
        model: str,
        group: str,
        status: int,
        code: str | None,
        prompt: int,
        completion: int,
        latency_s: float,
        ttft_s: float | None,
    ) -> None:
        key = (model, group, status)
        ch = self._children.get(key)
        if ch is None:
            ch = self._children[key] = (
                self.requests.labels(model, group, str(status)),
                self.tokens.labels(model, group, "prompt"),
                self.tokens.labels(model, group, "completion"),
                self.latency.labels(model, group),
                self.ttft.labels(model, group),
            )
        ch[0].inc()
        if prompt:
            ch[1].inc(prompt)
        if completion:
            ch[2].inc(completion)
        ch[3].observe(latency_s)
        if ttft_s is not None:
            ch[4].observe(ttft_s)
        if code:
            self.errors.labels(model, group, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
