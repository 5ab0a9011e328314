"""The platform's error codes and JSON error body (REFERENCE.md error table).

Raised anywhere in the gateway as `PlatformError`; the app's exception handler and the streaming
relay turn it into `{"error": {"code", "type", "message"}}` with the table's HTTP status.
"""

from __future__ import annotations

import msgspec

from schemas.run_gateway import ERROR_CODES
from schemas.run_gateway import ErrorCode as Code

__all__ = ["CODES", "Code", "PlatformError", "error_body"]

# code -> (type, http status), from the one table in schemas.run_gateway
CODES: dict[str, tuple[str, int]] = {code: (t, status) for code, (t, status, _m) in ERROR_CODES.items()}

_encode = msgspec.json.encode


def error_body(code: str, message: str) -> bytes:
    return _encode({"error": {"code": code, "type": CODES[code][0], "message": message}})


class PlatformError(Exception):
    """A refusal or failure with its platform code; `retry_after` (s) for 429s."""

    __slots__ = ("code", "message", "retry_after")

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = str(code)  # the plain code string: usage rows and bodies store exactly this
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return CODES[self.code][1]

    @property
    def type(self) -> str:
        return CODES[self.code][0]

    def body(self) -> bytes:
        return error_body(self.code, self.message)

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)} if self.retry_after is not None else {}
