"""The gateway runner's spec (`python -m runners.gateway SPEC.json`) and the config file it serves.

Written by the engine (it starts the gateway and rewrites `config_path` when deployments or service
groups change); read by `runners.gateway`. The gateway re-reads `config_path` when its mtime changes
(checked at most every 0.5 s, or at once on SIGHUP), so the engine must replace it atomically
(write a temporary file, then rename).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.catalog import ImageOptions, Task

__all__ = [
    "ERROR_CODES",
    "ErrorCode",
    "GatewayConfig",
    "GatewayDeployment",
    "GatewayGroup",
    "GatewayInstance",
    "GatewaySpec",
    "LimitPair",
    "MediaPolicy",
    "ModerationConfig",
]


class ErrorCode(StrEnum):
    """The platform's error codes (REFERENCE.md), named by their type: `ErrorCode.AK_BANNED` is
    "700003". A member is its code string wherever a string is wanted (bodies, usage rows)."""

    INVOKE_MODEL_ERROR = "500001"
    PARAM_ERROR = "500002"
    SYSTEM_ERROR = "500003"
    INCORRECT_API_KEY_PROVIDED = "500004"
    INVOKE_TEXT_AUDIT_ERROR = "600001"
    TEXT_AUDIT_NOT_PASS = "600002"
    TEXT_AUDIT_QUESTION_NOT_PASS = "600003"
    TEXT_AUDIT_ANSWER_NOT_PASSED = "600004"
    RESOURCES_TIPS = "600005"
    AK_RPM_RATELIMITING = "700001"
    AK_TPM_RATELIMITING = "700002"
    AK_BANNED = "700003"
    MODEL_RPM_RATELIMITING = "700004"
    MODEL_TPM_RATELIMITING = "700005"
    AK_IPM_RATELIMITING = "700006"
    MODEL_IPM_RATELIMITING = "700007"


_STATUS_AND_MEANING: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVOKE_MODEL_ERROR: (500, "model service failed"),
    ErrorCode.PARAM_ERROR: (400, "invalid parameters"),
    ErrorCode.SYSTEM_ERROR: (500, "system error"),
    ErrorCode.INCORRECT_API_KEY_PROVIDED: (401, "wrong AppKey"),
    ErrorCode.INVOKE_TEXT_AUDIT_ERROR: (400, "content moderation could not check the call"),
    ErrorCode.TEXT_AUDIT_NOT_PASS: (400, "content moderation blocked the call"),
    ErrorCode.TEXT_AUDIT_QUESTION_NOT_PASS: (400, "content moderation blocked the question"),
    ErrorCode.TEXT_AUDIT_ANSWER_NOT_PASSED: (400, "content moderation blocked the answer"),
    ErrorCode.RESOURCES_TIPS: (429, "free trial quota used up"),
    ErrorCode.AK_RPM_RATELIMITING: (429, "requests per minute over the key's limit"),
    ErrorCode.AK_TPM_RATELIMITING: (429, "tokens per minute over the key's limit"),
    ErrorCode.AK_BANNED: (429, "key banned"),
    ErrorCode.MODEL_RPM_RATELIMITING: (429, "requests per minute over the model's limit"),
    ErrorCode.MODEL_TPM_RATELIMITING: (429, "tokens per minute over the model's limit"),
    ErrorCode.AK_IPM_RATELIMITING: (429, "images per minute over the key's limit"),
    ErrorCode.MODEL_IPM_RATELIMITING: (429, "images per minute over the model's limit"),
}

# The platform's error table: code -> (type, HTTP status, meaning). One copy, read by the gateway
# (responses) and by `zsconf usage` (failure messages).
ERROR_CODES: dict[str, tuple[str, int, str]] = {
    code.value: (code.name, status, meaning) for code, (status, meaning) in _STATUS_AND_MEANING.items()
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitPair(_Strict):
    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute (prompt + completion)")
    ipm: int | None = Field(default=None, ge=1, description="images per minute (text-to-image)")


class MediaPolicy(_Strict):
    """Images in chat calls (`image_url` parts): base64 data URLs up to `max_image_bytes`; HTTP(S)
    URLs only from the listed hosts (the model server fetches them), none by default."""

    image_hosts: list[str] = Field(default_factory=list, description="host names, matched exactly")
    max_image_bytes: int = Field(default=10 * 2**20, ge=1)


class ModerationConfig(_Strict):
    blocklist: list[str] = Field(default_factory=list, description="case-insensitive substrings")
    check_output: bool = True


class GatewayInstance(_Strict):
    id: str = Field(description="instance id, recorded in usage (e.g. 'chat-0')")
    url: str = Field(description="OpenAI base URL of the model server, e.g. http://127.0.0.1:8101/v1")


class GatewayDeployment(_Strict):
    """One deployment; clients call it with `model` = its name."""

    tenant: str
    name: str
    served_model: str | None = Field(default=None, description="model name sent upstream (default: name)")
    instances: list[GatewayInstance] = Field(default_factory=list, description="[] = stopped")
    qps: float | None = Field(default=None, gt=0, description="QPS limit of the whole deployment")
    max_tokens_cap: int = Field(default=2048, ge=1, description="largest max_tokens accepted")
    moderation: bool = Field(default=True, description="apply the group's blocklist to this service")
    task: Task = Field(default="text-generation", description="the catalog's: which calls it answers")
    images: ImageOptions | None = Field(default=None, description="text-to-image: what it accepts")


class GatewayGroup(_Strict):
    tenant: str
    name: str
    enabled: bool = True
    services: list[str] = Field(default_factory=list, description="deployment names (same tenant)")
    per_key: LimitPair = Field(default_factory=LimitPair)
    per_model: dict[str, LimitPair] = Field(default_factory=dict, description="deployment name -> limits")
    trial_tokens: int | None = Field(default=None, ge=1, description="tokens per key, then 600005")
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)


class GatewayConfig(_Strict):
    """The file at `GatewaySpec.config_path`."""

    version: int = 1
    upstream_api_key: str | None = Field(default=None, description="sent upstream as Bearer")
    media: MediaPolicy = Field(default_factory=MediaPolicy)
    image_url_ttl_s: float = Field(
        default=3600.0, gt=0, description="how long response_format=url images stay"
    )
    deployments: list[GatewayDeployment] = Field(default_factory=list)
    groups: list[GatewayGroup] = Field(default_factory=list)


class GatewaySpec(_Strict):
    """The JSON file given to `python -m runners.gateway`."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port (printed)")
    state_url: str = Field(description="state store URL (sqlite:///... or postgresql+psycopg://...)")
    config_path: str = Field(description="absolute path of the GatewayConfig JSON file")
    workdir: str = Field(description="runner directory (events.jsonl, ready.json)")
    key_refresh_s: float = Field(default=0.5, gt=0, le=60)
    usage_flush_s: float = Field(default=0.5, gt=0, le=60)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    unhealthy_after: int = Field(default=3, ge=1, description="consecutive failures -> unhealthy")
    unhealthy_for_s: float = Field(default=5.0, ge=0, description="how long an instance is skipped")
