"""Device selection (npu / cuda / cpu) and the compute kernels the runners need. Imports torch."""

from kernels.device import DeviceInfo, DeviceUnavailableError, HostScalar, select_device

__all__ = ["DeviceInfo", "DeviceUnavailableError", "HostScalar", "select_device"]
