"""OpenAI request bodies (validated) and response bodies of the model server.

Called by `runners/serve/app.py`. Requests are pydantic models so a bad parameter becomes a 400 in
OpenAI's error shape naming the field; unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "StreamOptions",
    "error_body",
    "guard_for",
    "new_id",
    "parse_request",
    "usage",
]


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Parameters common to chat and completions, with OpenAI's ranges."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM's extension; -1 or 0 = off
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in {"system", "developer", "user", "assistant", "tool"}:
                raise ValueError(
                    f"messages[{i}].role: expected system, user, assistant or tool, got {role!r}"
                )
            content = message.get("content")
            if isinstance(content, list):  # content parts: the embedded engine serves text only
                texts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text":
                        raise ValueError(f"messages[{i}].content: only text parts are supported")
                    texts.append(str(part.get("text", "")))
                content = "".join(texts)
            elif content is None:
                if role != "assistant":
                    raise ValueError(f"messages[{i}].content: required for role {role}")
                content = ""  # an assistant tool call; templates concatenate content as a string
            elif not isinstance(content, str):
                raise ValueError(f"messages[{i}].content: expected a string or a list of text parts")
            out.append({**message, "content": content})
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's completions default

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value


def parse_request(model: type[BaseModel], data: Any) -> Any:
    """Validate a JSON body; the first error becomes a 400 naming its field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{param}: {message}" if param else message, param=param) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


FinishReason = Literal["stop", "length"]


def guard_for(api_key: str | None, loaded: threading.Event) -> Callable[[Any], None]:
    """The check every model-server route but /health makes: the internal key as a Bearer token
    (when the spec has one; 401 otherwise), and the model loaded (503 until it is)."""
    key = api_key.encode() if api_key else None

    def guard(request: Any) -> None:
        if key is not None:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
                raise ApiError(
                    401, "invalid or missing API key", type_="authentication_error", code="invalid_api_key"
                )
        if not loaded.is_set():
            raise ApiError(503, "the model is still loading", type_="server_error", code="model_loading")

    return guard
