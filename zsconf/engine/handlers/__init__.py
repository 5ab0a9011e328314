"""One handler per resource kind: what applying one change of that kind does.

Called by the walk (`zsconf.engine.apply`), which only orders changes and runs them; each handler
takes the apply's context and the change, and returns a line saying what it did (or raises).
"""

from __future__ import annotations

from collections.abc import Callable

from zsconf.engine.context import ApplyContext
from zsconf.engine.handlers.basic import apply_dataset, apply_tenant
from zsconf.engine.handlers.deployment import apply_deployment
from zsconf.engine.handlers.job import apply_job
from zsconf.engine.handlers.model import apply_model
from zsconf.engine.handlers.service_group import apply_service_group
from zsconf.plans import Change

__all__ = ["HANDLERS"]

HANDLERS: dict[str, Callable[[ApplyContext, Change], str]] = {
    "tenant": apply_tenant,
    "dataset": apply_dataset,
    "model": apply_model,
    "finetune": apply_job,
    "compression": apply_job,
    "evaluation": apply_job,
    "deployment": apply_deployment,
    "service_group": apply_service_group,
}
