"""Plan types: `Action`, `Change`, `Plan`. No I/O here.

Made by `zsconf.engine.plan`, shown by `zsconf.render`, executed by `zsconf.engine.apply`, saved
and read back by the CLI (`plan -o`) and the daemon. Reasons are for display only: apply never
branches on them.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Action", "Change", "Drift", "FieldDiff", "Plan"]

PLAN_FORMAT_VERSION = 1


class Action(enum.Enum):
    """What apply does to one resource; the values are the symbols users see."""

    NOOP = " "
    CREATE = "+"
    UPDATE = "~"
    REPLACE = "-/+"
    DELETE = "-"

    @property
    def is_replace(self) -> bool:
        return self is Action.REPLACE

    @property
    def verb(self) -> str:
        """Done: the event name apply records ("created")."""
        return _WORDS[self][0]

    @property
    def future(self) -> str:
        """Planned, as the plan says it ("will be created")."""
        return _WORDS[self][1]

    @property
    def conditional(self) -> str:
        """Not applied, as a status explains it ("would create")."""
        return _WORDS[self][2]

    @property
    def counted_as(self) -> str:
        """The key an apply's summary counts it under ("added")."""
        return _WORDS[self][3]


# Each action's words: (verb, future, conditional, counted as). The one table of them.
_WORDS = {
    Action.NOOP: ("unchanged", "is unchanged", "would stay", "unchanged"),
    Action.CREATE: ("created", "will be created", "would create", "added"),
    Action.UPDATE: ("updated in-place", "will be updated in-place", "would update in place", "changed"),
    Action.REPLACE: ("replaced", "must be replaced", "would replace", "replaced"),
    Action.DELETE: ("destroyed", "will be destroyed", "would delete", "destroyed"),
}


@dataclass
class FieldDiff:
    """One changed field: dotted path, before and after (JSON values, secrets already masked)."""

    path: str
    before: Any
    after: Any
    forces_replace: bool = False


@dataclass
class Drift:
    """Something found by refresh that differs from the state: a dead process, missing files.
    `apply_fixes`: apply repairs it though no resource changes (the stack's gateway process)."""

    address: str
    message: str
    apply_fixes: bool = False


@dataclass
class Change:
    """The planned action for one address, with everything apply and the renderer need."""

    address: str
    kind: str  # singular kind: "finetune"
    action: Action
    before: dict[str, Any] | None = None  # spec in state (None on create)
    after: dict[str, Any] | None = None  # desired spec (None on delete)
    fields: list[FieldDiff] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # display only
    content_hash: str = ""  # desired lineage hash (after)
    secrets_digest: str = ""  # keyed digest of the secret values `after` holds masked ("" = none)
    dependencies: list[str] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["action"] = self.action.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        d = dict(d)
        d["action"] = Action(d["action"])
        d["fields"] = [FieldDiff(**f) for f in d.get("fields", [])]
        return cls(**d)


@dataclass
class Plan:
    """The changes for one stack against one state serial."""

    changes: list[Change]
    state_serial: int
    state_lineage: str
    stack_hash: str
    stack_dir: str
    overrides: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    destroy: bool = False
    refresh_only: bool = False
    totals: dict[str, Any] = field(default_factory=dict)
    capacity: list[str] = field(default_factory=list)

    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    def has_changes(self) -> bool:
        return (
            bool(self.actionable())
            or any(d.apply_fixes for d in self.drift)
            or bool(self.drift and self.refresh_only)
        )

    def can_apply(self) -> bool:
        """The one rule for whether this plan may be applied (CLI and daemon both ask here)."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
        for c in self.changes:
            if c.action is Action.CREATE:
                out["add"] += 1
            elif c.action is Action.UPDATE:
                out["change"] += 1
            elif c.action is Action.REPLACE:
                out["replace"] += 1
            elif c.action is Action.DELETE:
                out["destroy"] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "state_serial": self.state_serial,
            "state_lineage": self.state_lineage,
            "stack_hash": self.stack_hash,
            "stack_dir": self.stack_dir,
            "overrides": list(self.overrides),
            "destroy": self.destroy,
            "refresh_only": self.refresh_only,
            "changes": [c.as_dict() for c in self.changes],
            "drift": [asdict(d) for d in self.drift],
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "totals": dict(self.totals),
            "capacity": list(self.capacity),
            "summary": self.counts(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("format_version") != PLAN_FORMAT_VERSION:
            raise ValueError(f"unsupported plan format_version {d.get('format_version')!r}")
        return cls(
            changes=[Change.from_dict(c) for c in d["changes"]],
            state_serial=d["state_serial"],
            state_lineage=d["state_lineage"],
            stack_hash=d["stack_hash"],
            stack_dir=d["stack_dir"],
            overrides=d.get("overrides", []),
            drift=[Drift(**x) for x in d.get("drift", [])],
            errors=d.get("errors", []),
            warnings=d.get("warnings", []),
            destroy=d.get("destroy", False),
            refresh_only=d.get("refresh_only", False),
            totals=d.get("totals", {}),
            capacity=d.get("capacity", []),
        )
