"""The embedded engine's OpenAI HTTP API (Litestar): chat, completions, models, health.

Built by `runners/serve/__main__.py` around a loaded (or loading) `Engine`. Litestar because the
gateway uses it too (one web stack to know); served by uvicorn with httptools. Every error is
OpenAI-shaped; `/health` answers 503 until the model is loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from runners.serve.accesslog import access_log
from runners.serve.engine import Engine, Event, GenParams, Job
from runners.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    error_body,
    guard_for,
    new_id,
    now,
    parse_request,
    usage,
)

if TYPE_CHECKING:
    from schemas.run_serve import ServeSpec

__all__ = ["EXCEPTION_HANDLERS", "build_app", "status_routes"]

log = logging.getLogger("runners.serve")
_encode = msgspec.json.Encoder().encode


def _sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"
_SSE_TYPE = "text/event-stream"


def _resolve(
    engine: Engine, req: ChatRequest | CompletionRequest, prompt_len: int, max_tokens: int | None, param: str
) -> GenParams:
    """Request parameters -> generation parameters: OpenAI defaults (or the model's sampling
    defaults, as vLLM takes them), max_tokens capped by the room left in max_model_len."""
    room = engine.max_model_len - prompt_len
    if room < 1:
        raise ApiError(
            400,
            f"this model's maximum context length is {engine.max_model_len} tokens; "
            f"the prompt is {prompt_len} tokens",
            param=param,
            code="context_length_exceeded",
        )
    defaults = engine.generation_defaults()
    temperature = req.temperature if req.temperature is not None else float(defaults.get("temperature", 1.0))
    top_p = req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0))
    top_k = req.top_k if req.top_k is not None else int(defaults.get("top_k", 0))
    return GenParams(
        max_tokens=min(max_tokens or room, room),
        temperature=temperature,
        top_p=top_p,
        top_k=max(top_k, 0),
        stop=tuple(req.stop or ()),
        seed=req.seed,
        n=req.n,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
    )


async def _json(request: Request[Any, Any, Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


async def _watch_disconnect(request: Request[Any, Any, Any], jobs: list[Job]) -> None:
    """Cancel the jobs when the client hangs up (the body is read, so the next ASGI message is
    the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in jobs:
                job.cancel()
            return


async def _events(jobs: list[Job]) -> AsyncIterator[tuple[int, Event]]:
    """Events of each job in turn (the worker runs them in order anyway), with the job's number."""
    for number, job in enumerate(jobs):
        while (event := await job.events.get()).kind != "done":
            yield number, event


async def _collect(
    request: Request[Any, Any, Any], jobs: list[Job]
) -> tuple[dict[int, list[str]], dict[int, str], int]:
    """Run jobs to the end for a non-streaming answer: texts and finish reasons by choice index."""
    n = jobs[0].params.n
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    completion_tokens = 0
    watcher = asyncio.create_task(_watch_disconnect(request, jobs))
    try:
        async for number, event in _events(jobs):
            index = number * n + event.index
            if event.kind == "delta":
                texts.setdefault(index, []).append(event.text)
            elif event.kind == "finish":
                reasons[index] = event.finish_reason or "stop"
                completion_tokens += event.completion_tokens
            elif event.kind == "error":
                raise ApiError(500, event.text, type_="server_error")
    finally:
        watcher.cancel()
        for job in jobs:  # cancelled mid-way (client gone, handler cancelled): stop generating
            job.cancel()
    return texts, reasons, completion_tokens


def status_routes(engine: Any, spec: ServeSpec, guard: Callable[[Any], None], **card: Any) -> list[Any]:
    """`/health` (503 while loading, then the engine's queue and counters) and `/v1/models` (the
    one served name, with `card`'s extra fields), the same for every engine zsconf runs."""

    @get("/health", sync_to_thread=False)
    def health() -> Response[dict[str, Any]]:
        if engine.loaded.is_set():
            return Response({"status": "ok", "queued": engine.queued(), **engine.stats}, status_code=200)
        return Response({"status": "loading"}, status_code=503)

    @get("/v1/models", sync_to_thread=False)
    def models(request: Request[Any, Any, Any]) -> dict[str, Any]:
        guard(request)
        model = {"id": spec.served_model_name, "object": "model", "created": now(), "owned_by": "zsconf",
                 "root": spec.model_dir, **card}  # fmt: skip
        return {"object": "list", "data": [model]}

    return [health, models]


def build_app(engine: Engine, spec: ServeSpec) -> Litestar:
    """The Litestar app serving `engine` as `spec.served_model_name`."""
    name = spec.served_model_name
    guard = guard_for(spec.api_key, engine.loaded)

    def check_model(model: str) -> None:
        if model != name:
            raise ApiError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")

    async def submit(prompts: list[list[int]], params: GenParams) -> list[Job]:
        loop = asyncio.get_running_loop()
        jobs = [Job(ids, params, loop) for ids in prompts]
        for job in jobs:
            engine.submit(job)
        return jobs

    # Litestar's Stream takes the handler's media_type over its own, so the handlers declare SSE and
    # the JSON answers are explicit Responses (whose own media_type wins).
    @post("/v1/chat/completions", status_code=200, media_type=_SSE_TYPE)
    async def chat(request: Request[Any, Any, Any]) -> Any:
        guard(request)
        req: ChatRequest = parse_request(ChatRequest, await _json(request))
        check_model(req.model)
        try:
            prompt_ids = engine.chat_prompt(req.messages, req.tools)
        except Exception as exc:  # the template rejected the conversation (e.g. role order)
            raise ApiError(400, f"messages: the chat template failed: {exc}", param="messages") from None
        params = _resolve(
            engine, req, len(prompt_ids), req.max_completion_tokens or req.max_tokens, "messages"
        )
        jobs = await submit([prompt_ids], params)
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Stream(
                _chat_stream(jobs, rid, created, name, len(prompt_ids), include_usage),
                media_type=_SSE_TYPE,
                headers={"Cache-Control": "no-cache"},
            )
        texts, reasons, completion_tokens = await _collect(request, jobs)
        return _json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "".join(texts.get(i, []))},
                        "logprobs": None,
                        "finish_reason": reasons.get(i, "stop"),
                    }
                    for i in range(params.n)
                ],
                "usage": usage(len(prompt_ids), completion_tokens),
            }
        )

    @post("/v1/completions", status_code=200, media_type=_SSE_TYPE)
    async def completions(request: Request[Any, Any, Any]) -> Any:
        guard(request)
        req: CompletionRequest = parse_request(CompletionRequest, await _json(request))
        check_model(req.model)
        raw = req.prompt
        if isinstance(raw, str):
            prompts, texts_in = [engine.text_prompt(raw)], [raw]
        elif all(isinstance(p, str) for p in raw):
            prompts, texts_in = [engine.text_prompt(p) for p in raw], list(raw)  # type: ignore[arg-type]
        elif all(isinstance(p, int) for p in raw):
            prompts = [list(raw)]  # type: ignore[arg-type]
            texts_in = [engine.tokenizer.decode(prompts[0])]
        else:
            prompts = [list(p) for p in raw]  # type: ignore[union-attr]
            texts_in = [engine.tokenizer.decode(p) for p in prompts]
        vocab = len(engine.tokenizer)
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        longest = max(len(p) for p in prompts)
        params = _resolve(engine, req, longest, req.max_tokens, "prompt")
        jobs = await submit(prompts, params)
        prompt_tokens = sum(len(p) for p in prompts)  # once per prompt, whatever n is (as vLLM)
        echo = texts_in if req.echo else None
        rid, created = new_id("cmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Stream(
                _completion_stream(jobs, rid, created, name, prompt_tokens, include_usage, echo),
                media_type=_SSE_TYPE,
                headers={"Cache-Control": "no-cache"},
            )
        texts, reasons, completion_tokens = await _collect(request, jobs)
        total = len(prompts) * params.n
        return _json_response(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": i,
                        "text": (echo[i // params.n] if echo else "") + "".join(texts.get(i, [])),
                        "logprobs": None,
                        "finish_reason": reasons.get(i, "stop"),
                    }
                    for i in range(total)
                ],
                "usage": usage(prompt_tokens, completion_tokens),
            }
        )

    return Litestar(
        route_handlers=[
            *status_routes(engine, spec, guard, max_model_len=engine.max_model_len),
            chat,
            completions,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[access_log],
        openapi_config=None,
        debug=False,
    )


async def _chat_stream(
    jobs: list[Job], rid: str, created: int, model: str, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    started: set[int] = set()
    completion_tokens = 0
    try:
        async for _, event in _events(jobs):
            if event.index not in started and event.kind in ("delta", "finish"):
                started.add(event.index)
                yield chunk(event.index, {"role": "assistant", "content": ""})
            if event.kind == "delta":
                yield chunk(event.index, {"content": event.text})
            elif event.kind == "finish":
                completion_tokens += event.completion_tokens
                yield chunk(event.index, {}, event.finish_reason)
            elif event.kind == "error":
                yield _sse(error_body(event.text, "server_error"))
                break
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        yield _DONE
    finally:
        for job in jobs:  # the client went away (Litestar cancels this generator): stop generating
            job.cancel()


async def _completion_stream(
    jobs: list[Job],
    rid: str,
    created: int,
    model: str,
    prompt_tokens: int,
    include_usage: bool,
    echo: list[str] | None,
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model}
    if include_usage:
        base["usage"] = None
    n = jobs[0].params.n
    echoed: set[int] = set()
    completion_tokens = 0

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        return _sse(
            {**base, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}
        )

    try:
        async for number, event in _events(jobs):
            index = number * n + event.index
            if echo and index not in echoed and event.kind in ("delta", "finish"):
                echoed.add(index)
                yield chunk(index, echo[number])
            if event.kind == "delta":
                yield chunk(index, event.text)
            elif event.kind == "finish":
                completion_tokens += event.completion_tokens
                yield chunk(index, "", event.finish_reason)
            elif event.kind == "error":
                yield _sse(error_body(event.text, "server_error"))
                break
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        yield _DONE
    finally:
        for job in jobs:
            job.cancel()


def _json_response(body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=200, media_type="application/json")


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    return Response(exc.body(), status_code=exc.status)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    # Litestar's own errors (bad JSON, unknown route, wrong method) in OpenAI's shape.
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return Response(error_body(str(exc.detail), type_), status_code=exc.status_code)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", exc_info=exc)
    return Response(error_body("internal server error", "server_error"), status_code=500)


# Every error in OpenAI's shape; the image server (runners/serve/images.py) uses the same.
EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
