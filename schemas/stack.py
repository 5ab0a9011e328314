"""The composed stack: `platform` plus one mapping of name -> spec per resource kind."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from schemas.common import Name, Resource, Spec
from schemas.datasets import Dataset
from schemas.deployments import Deployment
from schemas.jobs import Compression, Evaluation, Finetune
from schemas.models import Model
from schemas.platform import Platform
from schemas.service_groups import ServiceGroup
from schemas.tenants import Tenant

__all__ = ["KINDS", "Stack", "address", "parse_address", "parse_reference"]

# stack key -> (singular kind used in addresses, spec class). Order = the order of plan output.
KINDS: dict[str, tuple[str, type[Spec]]] = {
    "tenants": ("tenant", Tenant),
    "datasets": ("dataset", Dataset),
    "models": ("model", Model),
    "finetunes": ("finetune", Finetune),
    "compressions": ("compression", Compression),
    "evaluations": ("evaluation", Evaluation),
    "deployments": ("deployment", Deployment),
    "service_groups": ("service_group", ServiceGroup),
}
SINGULAR_TO_KEY = {singular: key for key, (singular, _) in KINDS.items()}


def address(kind: str, tenant: str | None, name: str) -> str:
    """`finetune/acme/support-lora`; a tenant is `tenant/acme`. `kind` is the singular form."""
    return f"{kind}/{name}" if kind == "tenant" else f"{kind}/{tenant}/{name}"


def parse_address(addr: str) -> tuple[str, str | None, str]:
    """Inverse of `address`; raises ValueError naming the expected form."""
    parts = addr.split("/")
    if len(parts) == 2 and parts[0] == "tenant":
        return "tenant", None, parts[1]
    if len(parts) == 3 and parts[0] in SINGULAR_TO_KEY and parts[0] != "tenant":
        return parts[0], parts[1], parts[2]
    kinds = ", ".join(SINGULAR_TO_KEY)
    raise ValueError(
        f"invalid address {addr!r}: expected KIND/TENANT/NAME (or tenant/NAME), KIND one of {kinds}"
    )


def parse_reference(text: str, kind: str) -> tuple[str | None, str]:
    """(tenant or None, name) of a resource of `kind` as a person names it: the address the CLI
    prints (`kind/tenant/name`), `kind/name`, `tenant/name` or a bare `name`. Another kind's
    address, or anything else, raises ValueError naming the expected form."""
    parts = text.split("/")
    if len(parts) == 3 and parts[0] != kind:
        raise ValueError(f"{text!r} is a {parts[0]}, not a {kind}")
    tenant: str | None
    if len(parts) == 3:
        tenant, name = parts[1], parts[2]
    elif len(parts) == 2:
        tenant, name = (None, parts[1]) if parts[0] == kind else (parts[0], parts[1])
    else:
        tenant, name = None, parts[0] if len(parts) == 1 else ""
    if not name or tenant == "":
        raise ValueError(f"{text!r} is not an address: expected {kind}/TENANT/NAME")
    return tenant, name


class Stack(Spec):
    platform: Platform = Field(default_factory=Platform)
    tenants: dict[Name, Tenant] = Field(default_factory=dict)
    datasets: dict[Name, Dataset] = Field(default_factory=dict)
    models: dict[Name, Model] = Field(default_factory=dict)
    finetunes: dict[Name, Finetune] = Field(default_factory=dict)
    compressions: dict[Name, Compression] = Field(default_factory=dict)
    evaluations: dict[Name, Evaluation] = Field(default_factory=dict)
    deployments: dict[Name, Deployment] = Field(default_factory=dict)
    service_groups: dict[Name, ServiceGroup] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_tenant(self) -> Stack:
        """Fill `tenant` from platform.default_tenant, or from the only tenant when there is one."""
        default = self.platform.default_tenant
        if default is None and len(self.tenants) == 1:
            default = next(iter(self.tenants))
        if default is None:
            return self
        for key in KINDS:
            if key == "tenants":
                continue
            for spec in getattr(self, key).values():
                if spec.tenant is None:
                    object.__setattr__(spec, "tenant", default)
        return self

    def resources(self) -> list[tuple[str, str, Any]]:
        """Every resource as (address, stack key, spec), in kind order then name order."""
        out: list[tuple[str, str, Any]] = []
        for key, (singular, _) in KINDS.items():
            for name, spec in getattr(self, key).items():
                tenant = None if key == "tenants" else spec.tenant
                out.append((address(singular, tenant, name), key, spec))
        return out


def is_resource(spec: Any) -> bool:
    return isinstance(spec, Resource)
