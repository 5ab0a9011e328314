"""The platform's error codes and JSON error body (REFERENCE.md error table).

Raised anywhere in the gateway as `PlatformError`; the app's exception handler and the streaming
relay turn it into `{"error": {"code", "type", "message"}}` with the table's HTTP status.
"""

from __future__ import annotations

import msgspec

__all__ = ["CODES", "PlatformError", "error_body"]

# code -> (type, http status)
CODES: dict[str, tuple[str, int]] = {
    "500001": ("INVOKE_MODEL_ERROR", 500),
    "500002": ("PARAM_ERROR", 400),
    "500003": ("SYSTEM_ERROR", 500),
    "500004": ("INCORRECT_API_KEY_PROVIDED", 401),
    "600001": ("INVOKE_TEXT_AUDIT_ERROR", 400),
    "600002": ("TEXT_AUDIT_NOT_PASS", 400),
    "600003": ("TEXT_AUDIT_QUESTION_NOT_PASS", 400),
    "600004": ("TEXT_AUDIT_ANSWER_NOT_PASSED", 400),
    "600005": ("RESOURCES_TIPS", 429),
    "700001": ("AK_RPM_RATELIMITING", 429),
    "700002": ("AK_TPM_RATELIMITING", 429),
    "700003": ("AK_BANNED", 429),
    "700004": ("MODEL_RPM_RATELIMITING", 429),
    "700005": ("MODEL_TPM_RATELIMITING", 429),
}

_encode = msgspec.json.encode


def error_body(code: str, message: str) -> bytes:
    return _encode({"error": {"code": code, "type": CODES[code][0], "message": message}})


class PlatformError(Exception):
    """A refusal or failure with its platform code; `retry_after` (s) for 429s."""

    __slots__ = ("code", "message", "retry_after")

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
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
