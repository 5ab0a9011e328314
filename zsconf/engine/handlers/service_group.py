"""Handler of service groups: keys up to the count the spec asks (each kept until shown, see
`zsconf.keys`), extra ones revoked; the gateway reads groups from the state.
"""

from __future__ import annotations

from zsconf.engine.context import ApplyContext, crash_point, desired_spec, record, split_address
from zsconf.keys import create_key
from zsconf.plans import Action, Change

__all__ = ["apply_service_group"]


def apply_service_group(ctx: ApplyContext, ch: Change) -> str:
    _, tenant, name = split_address(ch.address)
    assert tenant is not None
    if ch.action is Action.DELETE:
        ctx.store.revoke_api_keys(tenant, name)
        ctx.store.remove_resource(ch.address)
        return "destroyed (keys revoked)"
    if ch.action is Action.REPLACE:
        ctx.store.revoke_api_keys(tenant, name)
    spec = desired_spec(ctx, ch.address)
    active = [k for k in ctx.store.api_keys(tenant, name) if k.revoked_at is None]
    new = max(0, spec.keys - len(active))
    for _ in range(new):
        create_key(ctx.store, tenant, name, ctx.stack_dir)  # kept until shown: never lost by a crash
    if len(active) > spec.keys:
        from zsconf.state.models import utcnow

        with ctx.store.session() as s:
            for k in active[spec.keys :]:
                k.revoked_at = utcnow()
                s.add(k)
            s.commit()
    keys = [
        {"id": k.id, "prefix": k.prefix} for k in ctx.store.api_keys(tenant, name) if k.revoked_at is None
    ]
    record(ctx, ch, outputs={"keys": keys})
    crash_point("after_key")
    return f"{len(keys)} key(s)" + (f", {new} new" if new else "")
