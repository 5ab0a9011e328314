"""Device selection for the runners (train, validate): NPU (torch_npu), CUDA or CPU.

Called by `runners.train` at setup. NPU support is only imported when `torch_npu` is installed, and
then `transfer_to_npu` makes `torch.cuda` calls land on the NPU. Visible devices follow
ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES (read by the device libraries themselves).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["DeviceInfo", "DeviceUnavailableError", "HostValues", "select_device"]

DeviceType = Literal["npu", "cuda", "cpu"]


class DeviceUnavailableError(RuntimeError):
    """The spec asked for a device this machine does not have."""


@dataclass(frozen=True)
class DeviceInfo:
    type: DeviceType
    count: int
    bf16_supported: bool
    dist_backend: Literal["hccl", "nccl", "gloo"]

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu") if self.type == "cpu" else torch.device(self.type, local_rank)


def _npu() -> DeviceInfo | None:
    if importlib.util.find_spec("torch_npu") is None:
        return None
    import torch_npu  # noqa: F401  - registers the npu device with torch
    from torch_npu.contrib import transfer_to_npu  # noqa: F401  - routes torch.cuda.* to the NPU

    count = torch.npu.device_count()  # type: ignore[attr-defined]
    if count == 0:
        return None
    return DeviceInfo("npu", count, True, "hccl")


def _cuda() -> DeviceInfo | None:
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    return DeviceInfo("cuda", torch.cuda.device_count(), torch.cuda.is_bf16_supported(), "nccl")


def select_device(preference: str = "auto") -> DeviceInfo:
    """The device to train on. `auto` = npu, then cuda, then cpu; a named device that is missing
    raises DeviceUnavailableError (never a silent fallback to CPU)."""
    if preference == "cpu":
        return DeviceInfo("cpu", 1, False, "gloo")
    if preference == "npu":
        info = _npu()
        if info is None:
            raise DeviceUnavailableError(
                "device 'npu' requested but no Ascend NPU is visible (torch_npu not installed or "
                "ASCEND_RT_VISIBLE_DEVICES hides every card)"
            )
        return info
    if preference == "cuda":
        info = _cuda()
        if info is None:
            raise DeviceUnavailableError(
                "device 'cuda' requested but no CUDA GPU is visible (CPU-only torch or CUDA_VISIBLE_DEVICES empty)"
            )
        return info
    if preference != "auto":
        raise DeviceUnavailableError(f"unknown device {preference!r}: expected auto, npu, cuda or cpu")
    return _npu() or _cuda() or DeviceInfo("cpu", 1, False, "gloo")


class HostValues:
    """A few floats read back from the card without a full device sync.

    `send(t)` starts the copy of the 1-D tensor `t` into pinned host memory, ordered after the
    kernels that compute it and before whatever is queued later; `receive()` waits for that copy
    only. `t.tolist()` would instead wait for everything queued before the read, the whole backward
    pass and optimizer step included, and leave the card idle while the host queues the next step.
    On CPU both are plain reads."""

    def __init__(self, device: torch.device, size: int) -> None:
        self.on_card = device.type != "cpu"
        if self.on_card:
            self.host = torch.empty(size, dtype=torch.float32, pin_memory=True)
            self.copied = torch.cuda.Event()  # transfer_to_npu maps this onto the NPU
        self.value: torch.Tensor | None = None

    def send(self, t: torch.Tensor) -> None:
        if self.on_card:
            self.host.copy_(t.detach(), non_blocking=True)
            self.copied.record()
        else:
            self.value = t.detach()

    def receive(self) -> list[float]:
        if self.on_card:
            self.copied.synchronize()
            return self.host.tolist()
        assert self.value is not None, "receive() before send()"
        return self.value.tolist()
