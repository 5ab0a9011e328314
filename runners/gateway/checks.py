"""Request checks of the platform's call rules (REFERENCE.md "Service groups, keys and calls").

Called by the handlers on the decoded JSON body (plain dicts from msgspec: no pydantic per request).
Every failure raises `PlatformError(Code.PARAM_ERROR, ...)` naming the field. Decisions:

- temperature: accepted in [0, 2): the manual's range is (0, 2); 0 is accepted as greedy decoding
  because OpenAI clients send it for deterministic output.
- top_p (0, 1], top_k [1, 100], presence/frequency_penalty [-2, 2], n [1, 10], seed an integer,
  stop a string or a list of at most 4 strings, response_format.type text|json_object|json_schema.
- max_tokens / max_completion_tokens: (0, cap], cap = the deployment's max_tokens_cap (2048 default).
- roles: system only at position 0; user/assistant alternate; a `tool` message must follow an
  assistant message with tool_calls (or another tool message); the last message is from the user,
  or a tool result. Content: a string, null (assistant with tool_calls), or a list of
  {type: text|image_url} parts.
- image_url parts: only for an image-understanding deployment; the URL is a base64 data URL of
  a PNG, JPEG, WebP, GIF or BMP image up to the stack's size, or an http(s) URL on a host the stack
  lists (the model server fetches it; the gateway never does).
- images (`/v1/images/generations`, manual 000 §5.5.2): prompt 1-1000 characters, negative_prompt
  up to 1000, n, num_inference_steps, size (HEIGHTxWIDTH) and style from the model's catalog
  options, response_format url | b64_json, seed a non-negative integer, user a string.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runners.gateway.errors import Code, PlatformError

if TYPE_CHECKING:
    from schemas.catalog import ImageOptions
    from schemas.run_gateway import MediaPolicy

__all__ = ["ImageCall", "check_chat", "check_completion", "check_images", "estimate_tokens", "message_text"]

_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp|gif|bmp);base64,", re.IGNORECASE)
# What an image adds to the admission's token estimate (settled with the server's count): about
# what vLLM's Qwen2-VL makes of a small picture.
IMAGE_TOKENS = 256

_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _bad(msg: str) -> PlatformError:
    return PlatformError(Code.PARAM_ERROR, msg)


def _number(body: dict, name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(f"{name} must be a number")
    return v


def message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _bad("messages[].content must be a string or a list of parts")


def estimate_tokens(text: str) -> int:
    """Prompt tokens guessed before the call (the limits' first charge, corrected with the
    server's count when it answers): about 4 characters a token for ASCII text, one a token for
    CJK and other multi-byte characters, which tokenizers split about that finely. Counted from
    the UTF-8 length (C speed): a 3-byte character adds 2 bytes over its one character."""
    n = len(text)
    wide = (len(text.encode("utf-8", "surrogatepass")) - n) // 2
    return max(1, wide + (n - wide) // 4)


def _common(body: dict, cap: int) -> None:
    t = _number(body, "temperature")
    if t is not None and not 0 <= t < 2:
        raise _bad(f"temperature must be in [0, 2) (0 = greedy), got {t}")
    v = _number(body, "top_p")
    if v is not None and not 0 < v <= 1:
        raise _bad(f"top_p must be in (0, 1], got {v}")
    v = body.get("top_k")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100):
        raise _bad(f"top_k must be an integer in [1, 100], got {v!r}")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _number(body, name)
        if v is not None and not -2 <= v <= 2:
            raise _bad(f"{name} must be in [-2, 2], got {v}")
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= cap):
            raise _bad(f"{name} must be an integer in (0, {cap}], got {v!r}")
    v = body.get("n")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10):
        raise _bad(f"n must be an integer in [1, 10], got {v!r}")
    v = body.get("seed")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise _bad(f"seed must be an integer, got {v!r}")
    v = body.get("stop")
    if (
        v is not None
        and not isinstance(v, str)
        and not (isinstance(v, list) and len(v) <= 4 and all(isinstance(x, str) for x in v))
    ):
        raise _bad("stop must be a string or a list of at most 4 strings")
    v = body.get("stream")
    if v is not None and not isinstance(v, bool):
        raise _bad("stream must be a boolean")
    v = body.get("stream_options")
    if v is not None and not isinstance(v, dict):
        raise _bad("stream_options must be an object")
    rf = body.get("response_format")
    if rf is not None and (
        not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema")
    ):
        raise _bad("response_format.type must be text or json_object")


def _check_image_part(part: Any, where: str, model: str, vision: bool, media: MediaPolicy | None) -> None:
    """One `image_url` part of a chat message: allowed for this model, and a URL the policy allows."""
    if not vision or media is None:
        raise _bad(
            f"{where}: model {model!r} reads text only (type image_url); images go to an "
            "image-understanding deployment"
        )
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}.image_url.url must be a non-empty string")
    m = _DATA_URL.match(url)
    if m is not None:
        data = url[m.end() :]
        if len(data) * 3 // 4 > media.max_image_bytes + 2:
            raise _bad(f"{where}.image_url.url: the image is over {media.max_image_bytes} bytes")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}.image_url.url: not valid base64 data") from None
        return
    if url.startswith("data:"):
        raise _bad(f"{where}.image_url.url: a data URL must be data:image/(png|jpeg|webp|gif|bmp);base64,...")
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise _bad(
            f"{where}.image_url.url: expected a base64 data URL (or an http(s) URL on an allowed host)"
        )
    if u.hostname.lower() not in {h.lower() for h in media.image_hosts}:  # exact, as vLLM matches
        raise _bad(
            f"{where}.image_url.url: images are not fetched from {u.hostname} (send a base64 data URL; "
            "platform.gateway.image_hosts lists the hosts allowed)"
        )


def _check_parts(content: Any, i: int, model: str, vision: bool, media: MediaPolicy | None) -> int:
    """The parts of a list content; returns how many images it holds."""
    if not isinstance(content, list):
        return 0
    images = 0
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text must be a string")
        elif kind == "image_url":
            _check_image_part(part, where, model, vision, media)
            images += 1
        else:
            raise _bad(f"{where}.type must be text or image_url, got {kind!r}")
    return images


def check_chat(
    body: dict, cap: int, model: str = "", vision: bool = False, media: MediaPolicy | None = None
) -> tuple[str, int]:
    """Validate a chat request; returns its text (for the token estimate and moderation) and its
    number of images (`vision`: the deployment reads them, under `media`'s rules)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list")
    _common(body, cap)
    parts = []
    images = 0
    prev = None  # role of the previous non-system message
    prev_tool_calls = False
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of user, assistant, system, tool; got {role!r}")
        content = m.get("content")
        text = message_text(content)
        images += _check_parts(content, i, model, vision, media)
        if role == "system":
            if i != 0:
                raise _bad(f"messages[{i}]: a system message is only allowed at position 0")
        elif role == "tool":
            if not (prev == "tool" or (prev == "assistant" and prev_tool_calls)):
                raise _bad(f"messages[{i}]: a tool message must follow an assistant message with tool_calls")
        elif role == "user":
            if prev == "user":
                raise _bad(f"messages[{i}]: user and assistant messages must alternate")
        else:  # assistant
            if prev in (None, "assistant"):
                raise _bad(
                    f"messages[{i}]: user and assistant messages must alternate (assistant after {prev or 'start'})"
                )
        if role != "system":
            prev_tool_calls = role == "assistant" and bool(m.get("tool_calls"))
            prev = role
        if i == last and role not in ("user", "tool"):
            raise _bad(f"messages[{i}]: the last message must be from the user (or a tool result)")
        parts.append(text)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools must be a list")
    return "\n".join(parts), images


def check_completion(body: dict, cap: int) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    if not isinstance(prompt, str) or not prompt:
        raise _bad("prompt must be a non-empty string or list of strings")
    _common(body, cap)
    return prompt


@dataclass(frozen=True, slots=True)
class ImageCall:
    """A checked text-to-image request, with the model's defaults filled in."""

    prompt: str  # prompt and negative prompt: what moderation reads
    n: int
    steps: int
    size: str
    style: str
    response_format: str  # "url" | "b64_json"


def _int_in(body: dict, name: str, lo: int, hi: int, default: int) -> int:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{name} must be an integer in [{lo}, {hi}] for this model, got {v!r}")
    return v


def _choice(body: dict, name: str, allowed: Any, default: str) -> str:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, str) or v not in allowed:
        raise _bad(f"{name} must be one of {', '.join(allowed)} for this model, got {v!r}")
    return v


def check_images(body: dict, options: ImageOptions) -> ImageCall:
    """Validate a text-to-image request against the model's catalog options."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt is required: a description of the image")
    if len(prompt) > 1000:
        raise _bad(f"prompt must be at most 1000 characters, got {len(prompt)}")
    negative = body.get("negative_prompt")
    if negative is not None and (not isinstance(negative, str) or len(negative) > 1000):
        raise _bad("negative_prompt must be a string of at most 1000 characters")
    n = _int_in(body, "n", 1, options.max_n, 1)
    lo, hi = options.steps
    steps = _int_in(body, "num_inference_steps", lo, hi, options.default_steps)
    size = _choice(body, "size", options.sizes, options.default_size)
    style = _choice(body, "style", list(options.styles), options.default_style)
    fmt = _choice(body, "response_format", ("url", "b64_json"), "b64_json")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise _bad(f"seed must be a non-negative integer, got {seed!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be a string")
    return ImageCall(f"{prompt}\n{negative or ''}", n, steps, size, style, fmt)
