"""Console sessions: the admin token opens a signed session cookie; CSRF tokens derive from it.

Stateless, so a restarted daemon keeps its sessions and a new admin token ends them all: the
cookie is `ISSUED.NONCE.SIG` with SIG = HMAC-SHA256(admin token, ISSUED.NONCE), and a session's
CSRF token is HMAC(admin token, "csrf:" NONCE). The cookie is HttpOnly and SameSite=Strict; its
name carries the port, so two daemons on one host do not sign each other out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from http.cookies import SimpleCookie

__all__ = ["SESSION_S", "cookie_header", "cookie_name", "csrf_token", "issue", "read_cookies", "verify"]

SESSION_S = 12 * 3600


def _sign(token: str, text: str) -> str:
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


def cookie_name(port: int) -> str:
    return f"zsconf_session_{port}"


def issue(token: str, now: float | None = None) -> str:
    payload = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_sign(token, 'session:' + payload)}"


def verify(token: str, value: str | None, now: float | None = None) -> str | None:
    """The session's nonce when `value` is a live cookie this token signed, else None."""
    if not value or value.count(".") != 2:
        return None
    issued, nonce, sig = value.split(".")
    if not hmac.compare_digest(sig, _sign(token, f"session:{issued}.{nonce}")):
        return None
    try:
        age = (now if now is not None else time.time()) - int(issued)
    except ValueError:
        return None
    return nonce if 0 <= age < SESSION_S else None


def csrf_token(token: str, nonce: str) -> str:
    return _sign(token, "csrf:" + nonce)[:32]


def cookie_header(name: str, value: str, max_age: int = SESSION_S) -> str:
    return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"


def read_cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for k, v in headers:
        if k == b"cookie":
            try:
                jar.load(v.decode("latin-1"))
            except Exception:  # a malformed cookie header is no session
                continue
    return {k: m.value for k, m in jar.items()}
