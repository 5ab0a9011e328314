"""Shared field types of every resource kind: names, durations, references, lifecycle.

Imported by the kind modules of this package; nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

__all__ = [
    "Description",
    "Duration",
    "Lifecycle",
    "ModelRef",
    "Name",
    "Notify",
    "NotifyEvent",
    "Percent",
    "Spec",
    "parse_duration",
    "parse_model_ref",
]

# The studio manual's naming rule (001 §5-§8): 1-64 chars, a CJK character or a letter first,
# then CJK, letters, digits, `_`, `-`, `.`.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
NAME_PATTERN = rf"^[A-Za-z{_CJK}][A-Za-z0-9_.\-{_CJK}]{{0,63}}$"
_NAME_RE = re.compile(NAME_PATTERN)


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid name {value!r}: expected 1-64 characters, starting with a letter or a CJK "
            "character, then letters, CJK characters, digits, '_', '-' or '.'"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name), Field(json_schema_extra={"pattern": NAME_PATTERN})]


def Description(max_length: int) -> Any:
    """A free-text description limited as the manual limits it for the kind."""
    return Annotated[str, Field(default="", max_length=max_length)]


_DURATION_RE = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


def parse_duration(value: Any) -> int:
    """`90` (seconds), `"30m"`, `"2h"`, `"1h30m"`, `"1d"` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 2h or 1h30m")
    if isinstance(value, int | float):
        seconds = int(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match or not any(match.groups()):
            raise ValueError(
                f"invalid duration {value!r}: expected a number of seconds or e.g. 30m, 2h, 1h30m"
            )
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


# The JSON Schema (for editors) must accept what the validator accepts: "2h" as well as seconds.
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\s*(\d+\s*d)?\s*(\d+\s*h)?\s*(\d+\s*m)?\s*(\d+\s*s)?\s*$"},
            ],
            "description": "seconds, or e.g. 30m, 2h, 1h30m, 1d",
        }
    ),
]


def _parse_percent(value: Any) -> float:
    """`"5%"` -> 0.05; a bare number is a fraction already."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100.0
    return float(value)


Percent = Annotated[
    float,
    BeforeValidator(_parse_percent),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9.]+\s*%\s*$"},
            ],
            "description": "a fraction (0.05) or a percentage (5%)",
        }
    ),
]

_REF_RE = re.compile(
    rf"^(?P<name>[A-Za-z{_CJK}][A-Za-z0-9_.\-/{_CJK}]{{0,63}})(?:@(?P<version>latest|[0-9]+))?$"
)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """`support-bot@3` -> ("support-bot", 3); `support-bot@latest` or `support-bot` -> (name, None)."""
    match = _REF_RE.match(ref)
    if not match:
        raise ValueError(f"invalid model reference {ref!r}: expected NAME, NAME@N or NAME@latest")
    version = match.group("version")
    if version is not None and version != "latest":
        number = int(version)
        if not 1 <= number <= 10:
            raise ValueError(f"invalid model version in {ref!r}: a model has versions 1-10")
        return match.group("name"), number
    return match.group("name"), None


def _check_model_ref(value: str) -> str:
    parse_model_ref(value)
    return value


ModelRef = Annotated[str, AfterValidator(_check_model_ref)]

NotifyEvent = Literal[
    "created",
    "queued",
    "running",
    "completed",
    "failed",
    "stopped",
    "restarted",
    "hang",
    "healthy",
    "degraded",
    "upgraded",
]


class Spec(BaseModel):
    """Base of every spec: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class Lifecycle(Spec):
    """Terraform-style guards, on every resource."""

    prevent_destroy: bool = False
    ignore_changes: list[str] = Field(
        default_factory=list, description="dotted spec fields whose changes the plan ignores"
    )


class Notify(Spec):
    """Webhook notifications (the manuals' event subscription)."""

    events: list[NotifyEvent] = Field(default_factory=lambda: ["completed", "failed"])
    webhook: str | None = Field(default=None, pattern=r"^https?://")


class Resource(Spec):
    """Fields every resource but a tenant has."""

    # Which spec fields force a replace when they change; everything else updates in place.
    # "*" means every field except those in IN_PLACE.
    REPLACE: ClassVar[frozenset[str]] = frozenset()
    IN_PLACE: ClassVar[frozenset[str]] = frozenset({"description", "lifecycle"})

    tenant: Name | None = Field(
        default=None, description="owning tenant; defaults to platform.default_tenant"
    )
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)

    @classmethod
    def forces_replace(cls, field: str) -> bool:
        """Whether a change of the top-level spec field `field` means a new run or a new thing."""
        if field in cls.IN_PLACE:
            return False
        return "*" in cls.REPLACE or field in cls.REPLACE
