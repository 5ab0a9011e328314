"""The call path: checks, limits, moderation, routing, relay and metering of one OpenAI call.

Called by the controllers in `runners.gateway.app` with the authenticated principal (set by the auth
middleware) and the raw body. Bodies are decoded with msgspec into plain dicts and, when nothing
needs to change, forwarded as the original bytes. Responses are relayed as raw bytes; only what
metering and moderation need is decoded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from runners.gateway.checks import IMAGE_TOKENS, check_chat, check_completion, check_images, estimate_tokens
from runners.gateway.errors import Code, PlatformError, error_body
from runners.gateway.imagefiles import ImageFiles

if TYPE_CHECKING:
    from runners.gateway.config import Deployment, Group, Instance, Table
    from runners.gateway.keycache import KeyCache, KeyInfo
    from runners.gateway.limits import Limiter
    from runners.gateway.metering import Meter
    from runners.gateway.metrics import Metrics
    from runners.gateway.upstream import Upstream

__all__ = ["Call", "Proxy"]

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_DONE = b"data: [DONE]"
_DONE_EVENT = _DONE + b"\n\n"


# What the relay reads of a streamed event: the rest of it is skipped by the decoder, not built.
# gc=False: these never form cycles, and untracked objects spare the collector ~70 per stream.
class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: Any = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    text: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: Any = None
    completion_tokens: Any = None


class _Event(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = msgspec.UNSET


_decode_events = msgspec.json.Decoder(list[_Event]).decode


class Call:
    """Per-call bookkeeping (one object per request; plain attributes)."""

    __slots__ = (
        "code",
        "completion",
        "dep",
        "entries",
        "estimate",
        "group",
        "images",
        "inst",
        "key",
        "metered",
        "model",
        "prompt",
        "size",
        "start",
        "status",
        "steps",
        "stream",
        "ttft",
    )

    def __init__(self, key: KeyInfo, group: Group, start: float) -> None:
        self.key = key
        self.group = group
        self.start = start
        self.model = "-"
        self.dep: Deployment | None = None
        self.inst: Instance | None = None
        self.prompt = 0
        self.completion = 0
        self.status = 200
        self.code: str | None = None
        self.stream = False
        self.ttft: float | None = None
        self.entries: list = []
        self.estimate = 0
        self.metered = False
        self.images = 0  # text-to-image calls: images made, steps of each, HEIGHTxWIDTH
        self.steps: int | None = None
        self.size: str | None = None


def _hit(low: str, words: tuple[str, ...]) -> str | None:
    """The first blocklist word in `low` (already lower case), or None."""
    for w in words:
        if w in low:
            return w
    return None


def _blocked(text: str, words: tuple[str, ...]) -> str | None:
    return _hit(text.lower(), words)


class Proxy:
    def __init__(
        self, keys: KeyCache, limiter: Limiter, meter: Meter, metrics: Metrics, upstream: Upstream
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.meter = meter
        self.metrics = metrics
        self.upstream = upstream
        self.table: Table | None = None
        self.images = ImageFiles(None)

    # -- bookkeeping ------------------------------------------------------------------------
    def finish(self, c: Call) -> None:
        """Meter the call once: usage record, metrics, limits' completion tokens, trial total."""
        if c.metered:
            return
        c.metered = True
        now = time.monotonic()
        latency = now - c.start
        if c.inst is not None:
            c.inst.outstanding -= 1
        if c.entries:  # the estimate charged at admission becomes what was really used
            self.limiter.settle(c.entries, now, (c.prompt or c.estimate) + c.completion - c.estimate)
        total = c.prompt + c.completion
        if total and c.status == 200:
            used = self.keys.tokens_used
            used[c.key.id] = used.get(c.key.id, 0) + total
        self.meter.record(c, time.time(), latency)
        self.metrics.observe(c.model, c.key.group, c.status, c.code, c.prompt, c.completion, latency, c.ttft)

    def fail(self, c: Call, err: PlatformError) -> PlatformError:
        if c.status != 404:  # "model not found" keeps its 404
            c.status = err.status
        c.code = err.code
        self.finish(c)
        return err

    # -- entry point ------------------------------------------------------------------------
    async def handle(
        self, key: KeyInfo, group: Group, raw: bytes, kind: str, base_url: str = ""
    ) -> tuple[int, bytes, dict[str, str]] | AsyncIterator[tuple[bytes, bool]]:
        """Returns (status, body, headers) for a JSON answer, or for a stream an async iterator of
        (SSE bytes, more) where more=False marks the last bytes of the stream. `base_url`: how
        the client reached the gateway (image URLs are made from it)."""
        c = Call(key, group, time.monotonic())
        try:
            if kind == "image":
                return await self._images(c, raw, base_url)
            return await self._handle(c, raw, kind)
        except PlatformError as err:
            self.fail(c, err)
            status = 404 if c.status == 404 else err.status
            return status, err.body(), err.headers()
        except (TimeoutError, aiohttp.ClientError) as exc:
            err = PlatformError(Code.INVOKE_MODEL_ERROR, f"model service failed: {type(exc).__name__}")
            self.fail(c, err)
            return err.status, err.body(), {}

    def _route(self, c: Call, raw: bytes) -> tuple[dict, Deployment]:
        """The decoded body and the deployment its `model` names in the key's group."""
        try:
            body = _decode(raw)
        except msgspec.DecodeError as exc:
            raise PlatformError(Code.PARAM_ERROR, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise PlatformError(Code.PARAM_ERROR, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise PlatformError(Code.PARAM_ERROR, "model is required")
        c.model = model
        dep = c.group.services.get(model)
        if dep is None:
            c.status = 404
            raise PlatformError(Code.PARAM_ERROR, f"model {model!r} not found")
        c.dep = dep
        return body, dep

    async def _handle(self, c: Call, raw: bytes, kind: str) -> Any:
        body, dep = self._route(c, raw)
        model = c.model
        group = c.group
        if dep.task == "text-to-image":
            raise PlatformError(
                Code.PARAM_ERROR, f"model {model!r} makes images: call /v1/images/generations"
            )
        images = 0
        if kind == "chat":
            media = self.table.media if self.table is not None else None
            text, images = check_chat(
                body, dep.max_tokens_cap, model, dep.task == "image-understanding", media
            )
        else:
            text = check_completion(body, dep.max_tokens_cap)
        stream = body.get("stream") is True
        c.stream = stream
        # Moderation of the input: 600002 when the hit is in the system prompt or the tool
        # definitions (the request's setup), 600003 when it is in the question itself.
        words = group.blocklist if dep.moderation else ()
        if words:
            hit = _blocked(text, words)
            if hit is not None:
                msgs = body.get("messages") or []
                sys_hit = (
                    bool(msgs)
                    and msgs[0].get("role") == "system"
                    and _blocked(str(msgs[0].get("content") or ""), words) is not None
                )
                raise PlatformError(
                    Code.TEXT_AUDIT_NOT_PASS if sys_hit else Code.TEXT_AUDIT_QUESTION_NOT_PASS,
                    "the input did not pass content moderation",
                )
            tools = body.get("tools")
            if tools and _blocked(_encode(tools).decode(), words) is not None:
                raise PlatformError(
                    Code.TEXT_AUDIT_NOT_PASS, "the tool definitions did not pass content moderation"
                )
        if group.trial_tokens is not None and self.keys.tokens_used.get(c.key.id, 0) >= group.trial_tokens:
            raise PlatformError(
                Code.RESOURCES_TIPS, f"the free trial allowance of {group.trial_tokens} tokens is used up"
            )
        c.estimate = estimate_tokens(text) + IMAGE_TOKENS * images
        c.entries = self.limiter.admit(time.monotonic(), c.key.id, group, dep, model, c.estimate)
        # The upstream body: the served model name, and usage always asked for when streaming.
        client_usage = False
        changed = False
        if dep.served_model != model:
            body["model"] = dep.served_model
            changed = True
        if stream:
            opts = body.get("stream_options") or {}
            client_usage = bool(opts.get("include_usage"))
            if not client_usage:
                opts = dict(opts)
                opts["include_usage"] = True
                body["stream_options"] = opts
                changed = True
        out = _encode(body) if changed else raw
        path = "/chat/completions" if kind == "chat" else "/completions"
        table = self.table
        resp, inst = await self.upstream.post(dep, path, out, table.upstream_auth if table else None)
        c.inst = inst
        if resp.status != 200:
            data = await resp.read()
            resp.release()
            msg = _upstream_message(data)
            if resp.status < 500:
                raise PlatformError(Code.PARAM_ERROR, f"rejected by the model service: {msg}")
            raise PlatformError(Code.INVOKE_MODEL_ERROR, f"model service failed ({resp.status}): {msg}")
        if not stream:
            return await self._json(c, resp, words if group.check_output else ())
        return self._relay(c, resp, client_usage, words if group.check_output else (), kind)

    async def _images(self, c: Call, raw: bytes, base_url: str) -> tuple[int, bytes, dict[str, str]]:
        """A text-to-image call: checked against the model's options, moderated (prompt and
        negative prompt), charged `n` images per minute, forwarded with every default filled in
        (so what is metered is what was made), answered as base64 or as URLs this gateway serves
        to the same key for `image_url_ttl_s`."""
        body, dep = self._route(c, raw)
        if dep.task != "text-to-image" or dep.images is None:
            raise PlatformError(
                Code.PARAM_ERROR, f"model {c.model!r} does not make images: call /v1/chat/completions"
            )
        call = check_images(body, dep.images)
        words = c.group.blocklist if dep.moderation else ()
        if words and _blocked(call.prompt, words) is not None:
            raise PlatformError(
                Code.TEXT_AUDIT_QUESTION_NOT_PASS, "the prompt did not pass content moderation"
            )
        c.entries = self.limiter.admit(time.monotonic(), c.key.id, c.group, dep, c.model, 0, call.n)
        c.steps, c.size = call.steps, call.size
        body.update(model=dep.served_model, n=call.n, num_inference_steps=call.steps, size=call.size,
                    style=call.style, response_format="b64_json")  # fmt: skip
        table = self.table
        resp, inst = await self.upstream.post(
            dep, "/images/generations", _encode(body), table.upstream_auth if table else None
        )
        c.inst = inst
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            msg = _upstream_message(data)
            if resp.status < 500:
                raise PlatformError(Code.PARAM_ERROR, f"rejected by the model service: {msg}")
            raise PlatformError(Code.INVOKE_MODEL_ERROR, f"model service failed ({resp.status}): {msg}")
        try:
            doc = _decode(data)
            items = doc["data"]
            c.images = len(items)
        except (msgspec.DecodeError, KeyError, TypeError):
            raise PlatformError(
                Code.INVOKE_MODEL_ERROR, "the model service sent an invalid response"
            ) from None
        if call.response_format == "url":
            doc["data"] = await self.images.save(c.key.id, items, base_url)
            data = _encode(doc)
        self.finish(c)
        return 200, data, {}

    async def _json(
        self, c: Call, resp: aiohttp.ClientResponse, words: tuple[str, ...]
    ) -> tuple[int, bytes, dict[str, str]]:
        try:
            data = await resp.read()
        finally:
            resp.release()
        try:
            doc = _decode(data)
            usage = doc.get("usage") or {}
        except (msgspec.DecodeError, AttributeError):
            raise PlatformError(
                Code.INVOKE_MODEL_ERROR, "the model service sent an invalid response"
            ) from None
        c.prompt = int(usage.get("prompt_tokens") or c.estimate)
        c.completion = int(usage.get("completion_tokens") or 0)
        if words:
            try:
                text = "".join(
                    (ch.get("message") or {}).get("content") or ch.get("text") or "" for ch in doc["choices"]
                )
            except (KeyError, TypeError, AttributeError):
                raise PlatformError(
                    Code.INVOKE_TEXT_AUDIT_ERROR, "the answer could not be checked by content moderation"
                ) from None
            if _blocked(text, words) is not None:
                raise PlatformError(
                    Code.TEXT_AUDIT_ANSWER_NOT_PASSED, "the answer did not pass content moderation"
                )
        self.finish(c)
        return 200, data, {}

    async def _relay(
        self, c: Call, resp: aiohttp.ClientResponse, client_usage: bool, words: tuple[str, ...], kind: str
    ) -> AsyncIterator[tuple[bytes, bool]]:
        """Relay SSE events as they arrive (each read is forwarded at once, cut at event
        boundaries); strip or synthesize the usage chunk; meter at the end, also when the client
        goes away (the generator is closed and `finally` runs).

        Without a usage chunk from the backend, completion tokens = content-bearing chunks
        (one token per chunk, as vLLM and the embedded engine stream).

        Cost per read, not per event (the bench stub's 18-event stream arrives in one read; split
        and decoded event by event it cost ~80 us of CPU per stream, timed alone, now ~25):
        `_parse` decodes a read's events in one msgspec call into structs holding only what
        metering and moderation need, moderation checks the read's new text plus a tail of the
        previous one, and the read is forwarded as the same bytes (SSE comments included) unless
        an event has to be dropped or added. The read that ends with [DONE] is yielded with
        more=False, so the server writes it together with the end of the chunked body (one write
        to the client instead of two)."""
        buf = b""
        seen_usage = False
        counted = 0
        tail = ""  # the end of the output so far (lower case), for blocklist hits spanning reads
        keep = max((len(w) for w in words), default=1) - 1
        last: tuple[bytes, int] | None = None  # (block, index) of the last content event
        done = False
        ok = False
        try:
            async for data in resp.content.iter_any():
                if c.ttft is None:
                    c.ttft = time.monotonic() - c.start
                if done:  # nothing follows [DONE]
                    continue
                buf += data
                cut = buf.rfind(b"\n\n") + 2
                if cut == 1:
                    continue
                block = buf[:cut]
                buf = buf[cut:]
                events, done = _parse(block)
                drop: list[int] = []
                pieces: list[str] = []
                for i, ev in enumerate(events):
                    if ev.error is not msgspec.UNSET:
                        msg = _upstream_message(_split(block)[0][i])
                        raise PlatformError(Code.INVOKE_MODEL_ERROR, f"model service failed: {msg}")
                    choices = ev.choices
                    if choices:
                        last = (block, i)
                        for ch in choices:
                            delta = ch.delta
                            piece = (delta.content if delta is not None else None) or ch.text
                            if piece:
                                counted += 1
                                pieces.append(piece)
                            elif delta is not None and delta.tool_calls:
                                counted += 1
                    elif ev.usage is not None:
                        seen_usage = True
                        c.prompt = int(ev.usage.prompt_tokens or c.estimate)
                        c.completion = int(ev.usage.completion_tokens or 0)
                        if not client_usage:
                            drop.append(i)
                if pieces and words:
                    text = tail + "".join(pieces).lower()
                    if _hit(text, words) is not None:
                        raise PlatformError(
                            Code.TEXT_AUDIT_ANSWER_NOT_PASSED, "the answer did not pass content moderation"
                        )
                    tail = text[-keep:] if keep else ""
                extra = b""
                if done and client_usage and not seen_usage:
                    c.completion = counted
                    extra = self._usage_event(c, _split(last[0])[0][last[1]] if last else None)
                if not drop and not extra:
                    yield block, not done
                    continue
                out = [b"data:" + p + b"\n\n" for i, p in enumerate(_split(block)[0]) if i not in drop]
                if extra:
                    out.append(extra)
                if done:
                    out.append(_DONE_EVENT)
                yield b"".join(out), not done
            ok = True
        except PlatformError as err:
            c.code = err.code  # the HTTP status (200) was already sent
            yield b"data: " + error_body(err.code, err.message) + b"\n\n", False
        except (TimeoutError, aiohttp.ClientError) as exc:
            if not done:  # after [DONE] the client has its answer; only the connection is lost
                c.code = Code.INVOKE_MODEL_ERROR.value
                msg = f"model service failed: {type(exc).__name__}"
                yield b"data: " + error_body(Code.INVOKE_MODEL_ERROR, msg) + b"\n\n", False
        finally:
            if ok:
                resp.release()
            else:  # stop the upstream generating for a client that is gone or refused
                resp.close()
            if not seen_usage:
                c.completion = counted
            if not c.prompt:
                c.prompt = c.estimate
            self.finish(c)

    def _usage_event(self, c: Call, last_raw: bytes | None) -> bytes:
        """The include_usage chunk, computed by counting when the backend sent none."""
        if not c.prompt:
            c.prompt = c.estimate
        head: dict[str, Any] = {}
        if last_raw is not None:
            with contextlib.suppress(msgspec.DecodeError):
                head = _decode(last_raw)
        doc = {
            "id": head.get("id", "chatcmpl-gw"),
            "object": head.get("object", "chat.completion.chunk"),
            "created": head.get("created", int(time.time())),
            "model": head.get("model", c.model),
            "choices": [],
            "usage": {
                "prompt_tokens": c.prompt,
                "completion_tokens": c.completion,
                "total_tokens": c.prompt + c.completion,
            },
        }
        return b"data: " + _encode(doc) + b"\n\n"


def _split(block: bytes) -> tuple[list[bytes], bool]:
    """The data payloads of a block of complete SSE events (other fields and comments skipped)
    and whether it ended with `data: [DONE]`, which is left out."""
    payloads = [ev[5:] for ev in map(bytes.lstrip, block.split(b"\n\n")) if ev[:5] == b"data:"]
    done = bool(payloads) and payloads[-1].strip() == b"[DONE]"
    if done:
        payloads.pop()
    return payloads, done


def _parse(block: bytes) -> tuple[list[_Event], bool]:
    """The events of a block of complete SSE events, and whether `data: [DONE]` ended it.

    The usual block (`data: {...}` events only) becomes one JSON array with a C-level replace,
    no split (JSON has no raw newline inside a value, so only event boundaries match); anything
    else (comments, `event:` lines, no space after `data:`) fails to decode that way and takes
    `_split`. Raises 500001 when an event is not a JSON object of the streaming shape."""
    done = block.endswith(_DONE_EVENT)
    body = block[: -len(_DONE_EVENT)] if done else block
    if not body:
        return [], done
    if body[:6] == b"data: ":
        try:
            return _decode_events(b"[" + body[5:-2].replace(b"\n\ndata:", b",") + b"]"), done
        except msgspec.DecodeError:
            pass
    payloads, done = _split(block)
    if not payloads:
        return [], done
    try:
        events = _decode_events(b"[" + b",".join(payloads) + b"]")
    except msgspec.DecodeError:
        events = []
    if len(events) != len(payloads):
        raise PlatformError(Code.INVOKE_MODEL_ERROR, "the model service sent an invalid event")
    return events, done


def _upstream_message(data: bytes) -> str:
    try:
        doc = _decode(data)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg)[:300]
    except Exception:
        return data[:300].decode(errors="replace")
