"""The gateway's routing table, built from the engine's config file (schemas.run_gateway.GatewayConfig).

Called by `runners.gateway.app` at startup and by its reload task when the file's mtime changes.
The table is rebuilt whole and swapped in one assignment, so a request sees either the old or the
new table, never a mix. Instance objects (outstanding counters, health) are carried over by URL so
reloads do not reset load balancing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from schemas.catalog import ImageOptions
from schemas.run_gateway import GatewayConfig, MediaPolicy

__all__ = ["Deployment", "Group", "Instance", "Table", "load_table"]


@dataclass(eq=False, slots=True)
class Instance:
    id: str
    url: str  # base URL ending in /v1
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0


@dataclass(eq=False, slots=True)
class Deployment:
    tenant: str
    name: str
    served_model: str
    instances: list[Instance]
    qps: float | None
    qps_window: float  # seconds; limit = qps * window requests per sliding window
    qps_limit: int
    max_tokens_cap: int
    moderation: bool
    task: str = "text-generation"  # text-generation | image-understanding | text-to-image
    images: ImageOptions | None = None


@dataclass(eq=False, slots=True)
class Group:
    tenant: str
    name: str
    enabled: bool
    services: dict[str, Deployment]
    key_rpm: int | None
    key_tpm: int | None
    key_ipm: int | None
    model_limits: dict[str, tuple[int | None, int | None, int | None]]  # rpm, tpm, ipm
    trial_tokens: int | None
    blocklist: tuple[str, ...]
    check_output: bool
    models_body: bytes = b""


@dataclass(eq=False, slots=True)
class Table:
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)
    upstream_auth: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    image_url_ttl_s: float = 3600.0
    mtime: float = -1.0


def load_table(path: str | Path, old: Table | None = None) -> Table:
    """Parse and validate the config file (pydantic: once per reload, never per request)."""
    import msgspec

    p = Path(path)
    raw = p.read_bytes()
    cfg = GatewayConfig.model_validate(json.loads(raw))
    known: dict[str, Instance] = {}
    if old is not None:
        for g in old.groups.values():
            for d in g.services.values():
                for inst in d.instances:
                    known[inst.url] = inst
    deps: dict[tuple[str, str], Deployment] = {}
    for d in cfg.deployments:
        insts = []
        for i in d.instances:
            url = i.url.rstrip("/")
            inst = known.get(url) or Instance(i.id, url)
            inst.id = i.id
            insts.append(inst)
        if d.qps:
            window = max(1.0, 1.0 / d.qps)
            limit = max(1, math.floor(d.qps * window + 1e-9))
        else:
            window, limit = 1.0, 0
        deps[(d.tenant, d.name)] = Deployment(
            d.tenant,
            d.name,
            d.served_model or d.name,
            insts,
            d.qps,
            window,
            limit,
            d.max_tokens_cap,
            d.moderation,
            d.task,
            d.images,
        )
    table = Table(
        upstream_auth=f"Bearer {cfg.upstream_api_key}" if cfg.upstream_api_key else None,
        media=cfg.media,
        image_url_ttl_s=cfg.image_url_ttl_s,
    )
    for g in cfg.groups:
        services: dict[str, Deployment] = {}
        for s in g.services:
            dep = deps.get((g.tenant, s))
            if dep is not None:
                services[s] = dep
        group = Group(
            g.tenant,
            g.name,
            g.enabled,
            services,
            g.per_key.rpm,
            g.per_key.tpm,
            g.per_key.ipm,
            {m: (lim.rpm, lim.tpm, lim.ipm) for m, lim in g.per_model.items()},
            g.trial_tokens,
            tuple(w.lower() for w in g.moderation.blocklist if w),
            g.moderation.check_output,
        )
        group.models_body = msgspec.json.encode(
            {
                "object": "list",
                "data": [{"id": s, "object": "model", "created": 0, "owned_by": g.tenant} for s in services],
            }
        )
        table.groups[(g.tenant, g.name)] = group
    table.mtime = p.stat().st_mtime
    return table
