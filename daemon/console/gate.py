"""The admin server's one door (ASGI, in front of routing): who may call what, and the security
headers every console response carries.

- `/console/static/*` and `/console/login` are open (assets hold nothing secret).
- Everything else needs the bearer token (the CLI, scripts) or a console session cookie.
- A request made with the cookie that changes anything (not GET/HEAD) must carry the session's
  CSRF token in `X-CSRF-Token`: the cookie alone proves nothing about who built the request.
- A console page asked for without a session gets 401 with the sign-in form; the API gets 401 JSON.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from daemon.console.session import cookie_name, csrf_token, read_cookies, verify

__all__ = ["CSP", "guard"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")  # fmt: skip
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_OPEN = ("/console/static/", "/console/login")
_SAFE = {"GET", "HEAD", "OPTIONS"}

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _reply(
    send: Send, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def guard(app: Any, token: str, port: int, login_page: Callable[[dict[str, Any]], bytes]) -> Any:
    """Wrap the admin app. `login_page(scope)` renders the sign-in form (401) for a console page."""
    bearer = f"Bearer {token}".encode()
    cookie = cookie_name(port)
    denied = json.dumps(
        {"error": "missing or wrong admin token (Authorization: Bearer <.zsconf/admin.token>)"}
    )

    async def wrapped(scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path: str = scope["path"]
        console = path == "/console" or path.startswith("/console/")
        headers = scope["headers"]
        got = next((v for k, v in headers if k == b"authorization"), b"")
        by_bearer = hmac.compare_digest(got, bearer)
        nonce = None if by_bearer else verify(token, read_cookies(headers).get(cookie))
        authed = by_bearer or nonce is not None
        scope["zsconf"] = {"nonce": nonce, "authed": authed}

        started = time.perf_counter()

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k for k, _ in message.get("headers", [])}
                # Server-Timing: the server's own time for the page (browsers' devtools show it).
                took = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                message["headers"] = [*message.get("headers", []), *(h for h in _HEADERS if h[0] not in have),
                                      (b"server-timing", took)]  # fmt: skip
            await send(message)

        out = send_secured if console else send
        if not authed and not (console and path.startswith(_OPEN)):
            if console and scope["method"] in _SAFE:
                await _reply(out, 401, login_page(scope), b"text/html; charset=utf-8", [])
            else:
                await _reply(
                    out, 401, denied.encode(), b"application/json", [(b"www-authenticate", b"Bearer")]
                )
            return
        if nonce is not None and scope["method"] not in _SAFE and not path.startswith("/console/login"):
            sent = next((v for k, v in headers if k == b"x-csrf-token"), b"").decode("latin-1")
            if not hmac.compare_digest(sent, csrf_token(token, nonce)):
                body = json.dumps({"error": "missing or wrong CSRF token (reload the page)"}).encode()
                await _reply(out, 403, body, b"application/json", [])
                return
        await app(scope, receive, out)

    return wrapped
