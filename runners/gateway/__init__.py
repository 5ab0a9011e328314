"""The OpenAI-compatible gateway (Litestar): keys, limits, checks, moderation, routing, metering.

Started by the engine as `python -m runners.gateway SPEC.json` (spec: schemas.run_gateway.GatewaySpec).
"""

from __future__ import annotations

__all__: list[str] = []
