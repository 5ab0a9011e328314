"""Pydantic v2 models of every resource kind and of the stack file. Imports pydantic only.

Imported by the library (`zsconf`), the daemon and the runners; never imports them.
"""

from schemas.common import Lifecycle, ModelRef, Name, Notify, parse_duration, parse_model_ref
from schemas.datasets import Dataset
from schemas.deployments import Deployment
from schemas.jobs import Compression, Evaluation, Finetune
from schemas.models import Model
from schemas.platform import Platform
from schemas.service_groups import ServiceGroup
from schemas.stack import KINDS, Stack, address, parse_address
from schemas.tenants import Tenant

__all__ = [
    "KINDS",
    "Compression",
    "Dataset",
    "Deployment",
    "Evaluation",
    "Finetune",
    "Lifecycle",
    "Model",
    "ModelRef",
    "Name",
    "Notify",
    "Platform",
    "ServiceGroup",
    "Stack",
    "Tenant",
    "address",
    "parse_address",
    "parse_duration",
    "parse_model_ref",
]
