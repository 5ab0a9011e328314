"""The floor to compare bench/gateway.py against: a bare Litestar + aiohttp passthrough with no
feature at all (no keys, limits, checks, metering), as in /work/shared/bench/gateway/README.md.

Run by `python bench/gateway.py --floor`; serves on --port and forwards to --upstream.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

__all__ = ["main"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--upstream-key", default="")
    ap.add_argument("--port", type=int, default=18081)
    args = ap.parse_args()
    state: dict[str, aiohttp.ClientSession] = {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.upstream_key}"}

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request) -> Response | Stream:
        body = await request.body()
        resp = await state["s"].post(args.upstream + "/chat/completions", data=body, headers=headers)
        if b'"stream":true' not in body:
            data = await resp.read()
            resp.release()
            return Response(data, media_type="application/json")

        async def relay():
            async for chunk in resp.content.iter_any():
                yield chunk
            resp.release()

        return Stream(relay(), media_type="text/event-stream")

    @get("/v1/models")
    async def models() -> Response:  # the harness's readiness probe
        return Response(
            b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}', media_type="application/json"
        )

    async def start() -> None:
        state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    app = Litestar([chat, models], on_startup=[start], openapi_config=None)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
