"""Names the engine, the daemon and the CLI share: run statuses, job kinds, the version limit.

One place for each fact, as OpenTofu's `plans/action.go` holds the actions (the actions and their
words live beside `Action` in `zsconf.plans`). Imported by everything; imports nothing of zsconf,
so the CLI can use it at no cost.
"""

from __future__ import annotations

import enum

__all__ = [
    "ACTIVE_RUN",
    "FINISHED_RUN",
    "JOB_KINDS",
    "MAX_VERSIONS",
    "VERSIONING_KINDS",
    "RunStatus",
]


class RunStatus(enum.StrEnum):
    """Status of a run row (one attempt of a job, or one deployment instance)."""

    INTENT = "intent"  # written before the side effect; nothing may have started yet
    SUBMITTED = "submitted"
    QUEUED = "queued"  # waiting for cards or a tenant quota
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"


# Runs not finished: what refresh observes and what a restarted daemon adopts.
ACTIVE_RUN = frozenset({RunStatus.INTENT, RunStatus.SUBMITTED, RunStatus.QUEUED, RunStatus.RUNNING})
FINISHED_RUN = frozenset(RunStatus) - ACTIVE_RUN

# Kinds whose apply starts a job (a runner process that ends).
JOB_KINDS = ("finetune", "compression", "evaluation")
# Jobs that produce model versions (an evaluation scores one and makes none).
VERSIONING_KINDS = ("finetune", "compression")
# Versions a model may have (the studio manual, §5).
MAX_VERSIONS = 10
