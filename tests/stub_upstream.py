#!/usr/bin/env python3
"""A fast, deterministic OpenAI-compatible upstream for the gateway tests and bench/gateway.py.

A raw asyncio HTTP/1.1 server (httptools parser, uvloop when installed; adapted from
/work/shared/bench/gateway/stub_upstream.py), so it costs a few tens of microseconds per request.

Endpoints: POST /v1/chat/completions, POST /v1/completions (JSON or SSE), GET /v1/models, /health,
/stats (counters), /last (the last request body received, as JSON).

Replies: `--chunks` words (one word = one completion token = one SSE chunk), prompt tokens =
max(1, characters of the messages // 4). Markers in the request text steer a call:
  [[say:TEXT]]      reply TEXT (split on spaces into chunks; "~" also splits, without a space)
  [[fail:CODE]]     answer HTTP CODE with an OpenAI error body
  [[midfail]]       stream: two chunks, then `data: {"error": ...}` and the end
  [[drop]]          stream: two chunks, then the connection is cut
  [[nousage]]       never send usage (JSON or stream)
  [[delay:MS]]      wait before answering; [[chunkdelay:MS]] between chunks
  [[garbage]]       answer 200 with a body that is not JSON
  [[ptok:N]]        report N prompt tokens (as a chat template and tokenizer would count)
  [[badchoices]]    answer 200 JSON whose `choices` is not a list

Usage: stub_upstream.py [--host 127.0.0.1] [--port 0] [--chunks 16] [--api-key KEY] [--id NAME]
Prints one JSON line {"event": "ready", "port": P, "pid": N} when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import time

import httptools

WORDS = (
    "Hello",
    " from",
    " the",
    " stub",
    " upstream",
    ",",
    " a",
    " fixed",
    " reply",
    " for",
    " gateway",
    " tests",
    ".",
)
_MARK = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")
STATUS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def _resp(status: int, body: bytes, keep: bool, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, STATUS.get(status, b"X"), ctype, len(body), b"" if keep else b"connection: close\r\n")
        + body
    )


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.words = [WORDS[i % len(WORDS)] for i in range(max(1, args.chunks))]
        self.api_key = args.api_key
        self.ident = args.id
        self.stats = {"requests": 0, "chat": 0, "completions": 0, "stream": 0}
        self.last = b"{}"
        self.seq = 0


class Proto(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.t: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.auth = b""
        self.closed = False
        self.queue: asyncio.Task | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.t = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.t.write(_resp(400, b'{"error":"bad http"}', False))
            self.t.close()

    def on_message_begin(self) -> None:
        self.url, self.body, self.auth = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        app = self.app
        app.stats["requests"] += 1
        if path in (b"/v1/chat/completions", b"/v1/completions") and method == b"POST":
            coro = self.generate(b"".join(self.body), keep, path.endswith(b"chat/completions"))
        elif path == b"/v1/models":
            coro = self.send(
                _resp(
                    200,
                    json.dumps({"object": "list", "data": [{"id": app.ident, "object": "model"}]}).encode(),
                    keep,
                )
            )
        elif path == b"/health":
            coro = self.send(_resp(200, b'{"status":"ok"}', keep))
        elif path == b"/stats":
            coro = self.send(_resp(200, json.dumps(app.stats).encode(), keep))
        elif path == b"/last":
            coro = self.send(_resp(200, app.last, keep))
        else:
            coro = self.send(_resp(404, b'{"error":{"message":"not found"}}', keep))
        prev = self.queue
        self.queue = asyncio.get_running_loop().create_task(self._after(prev, coro))

    async def _after(self, prev, coro) -> None:
        if prev is not None:
            await prev
        await coro

    async def send(self, data: bytes, keep: bool = True) -> None:
        if not self.closed:
            self.t.write(data)

    async def generate(self, raw: bytes, keep: bool, chat: bool) -> None:
        app = self.app
        app.last = raw
        if app.api_key and self.auth != b"Bearer " + app.api_key.encode():
            return await self.send(_resp(401, b'{"error":{"message":"bad upstream key"}}', keep))
        req = json.loads(raw)
        if chat:
            app.stats["chat"] += 1
            text = "".join(
                m.get("content") or ""
                if isinstance(m.get("content"), str | None)
                else json.dumps(m["content"])
                for m in req["messages"]
            )
        else:
            app.stats["completions"] += 1
            p = req.get("prompt", "")
            text = p if isinstance(p, str) else "".join(p)
        marks = {k: v for k, v in _MARK.findall(text)}
        prompt_tokens = int(marks["ptok"]) if "ptok" in marks else max(1, len(text) // 4)
        words = app.words
        if "say" in marks:  # "a b~c" -> chunks "a", " b", "c" ("~" splits a word across chunks)
            parts = marks["say"].split(" ")
            words = []
            for n, part in enumerate(parts):
                pieces = part.split("~")
                words += [(" " if n else "") + pieces[0], *pieces[1:]]
        if "delay" in marks:
            await asyncio.sleep(float(marks["delay"]) / 1000)
        if "fail" in marks:
            code = int(marks["fail"])
            return await self.send(
                _resp(
                    code,
                    json.dumps(
                        {"error": {"message": f"stub failure {code}", "type": "stub", "code": code}}
                    ).encode(),
                    keep,
                )
            )
        if "badchoices" in marks:
            return await self.send(
                _resp(
                    200,
                    b'{"id":"x","choices":"oops","usage":{"prompt_tokens":1,'
                    b'"completion_tokens":1,"total_tokens":2}}',
                    keep,
                )
            )
        if "garbage" in marks:
            return await self.send(_resp(200, b"<html>not json", keep))
        usage = (
            None
            if "nousage" in marks
            else {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
        )
        app.seq += 1
        cid = f"cmpl-{app.ident}-{app.seq}"
        model = req.get("model", "stub")
        if not req.get("stream"):
            content = "".join(words)
            if chat:
                choice = {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "finish_reason": "stop", "text": content}
                obj = "text_completion"
            doc = {"id": cid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
            if usage:
                doc["usage"] = usage
            return await self.send(_resp(200, json.dumps(doc, separators=(",", ":")).encode(), keep))
        app.stats["stream"] += 1
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": cid, "object": obj, "created": int(time.time()), "model": model}
        events = []
        for i, w in enumerate(words):
            if chat:
                delta = {"role": "assistant", "content": w} if i == 0 else {"content": w}
                ch = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                ch = {"index": 0, "text": w, "finish_reason": None}
            events.append({**head, "choices": [ch]})
        fin = (
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        events.append({**head, "choices": [fin]})
        opts = req.get("stream_options") or {}
        if usage and opts.get("include_usage"):
            events.append({**head, "choices": [], "usage": usage})
        frames = [_chunk(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n") for e in events]
        frames.append(_chunk(b"data: [DONE]\n\n"))
        hdr = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            + (b"" if keep else b"connection: close\r\n")
            + b"\r\n"
        )
        if "midfail" in marks or "drop" in marks:
            self.t.write(hdr + frames[0] + frames[1])
            await asyncio.sleep(0.01)
            if "drop" in marks:
                self.t.close()
                return None
            self.t.write(
                _chunk(b'data: {"error":{"message":"stub died mid-stream","code":500}}\n\n') + b"0\r\n\r\n"
            )
            return None
        cd = float(marks.get("chunkdelay", 0)) / 1000
        if not cd:
            return await self.send(hdr + b"".join(frames) + b"0\r\n\r\n")
        self.t.write(hdr)
        for f in frames:
            if self.closed:
                return None
            self.t.write(f)
            await asyncio.sleep(cd)
        return await self.send(b"0\r\n\r\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--id", default="stub")
    args = ap.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = App(args)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        server = await loop.create_server(lambda: Proto(app), sock=sock, backlog=2048)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "ready", "port": sock.getsockname()[1], "pid": os.getpid()}), flush=True)
        await stop.wait()
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
