"""Handlers of the kinds that only record what the files say: tenants and datasets (a dataset's
file digest is its output).
"""

from __future__ import annotations

from zsconf.engine.context import ApplyContext, desired_spec, record
from zsconf.errors import PermanentError
from zsconf.plans import Action, Change

__all__ = ["apply_dataset", "apply_tenant"]


def apply_tenant(ctx: ApplyContext, ch: Change) -> str:
    if ch.action is Action.DELETE:
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    record(ctx, ch)
    return "recorded"


def apply_dataset(ctx: ApplyContext, ch: Change) -> str:
    if ch.action is Action.DELETE:
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    spec = desired_spec(ctx, ch.address)
    path = ctx.stack_dir / spec.path
    if not path.is_file():
        raise PermanentError(f"dataset file {path} does not exist")
    from zsconf.engine.hashing import file_digest

    record(ctx, ch, outputs={"path": str(path.resolve()), "sha256": file_digest(path)})
    return f"sha256 {file_digest(path)[:12]}"
