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
"""

from __future__ import annotations

from typing import Any

from runners.gateway.errors import Code, PlatformError

__all__ = ["check_chat", "check_completion", "estimate_tokens", "message_text"]

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


def check_chat(body: dict, cap: int) -> str:
    """Validate a chat request; returns its text, for the token estimate and moderation."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list")
    _common(body, cap)
    parts = []
    prev = None  # role of the previous non-system message
    prev_tool_calls = False
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of user, assistant, system, tool; got {role!r}")
        text = message_text(m.get("content"))
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
    return "\n".join(parts)


def check_completion(body: dict, cap: int) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    if not isinstance(prompt, str) or not prompt:
        raise _bad("prompt must be a non-empty string or list of strings")
    _common(body, cap)
    return prompt
