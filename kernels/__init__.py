"""Device selection (npu / cuda / cpu) and the compute kernels the runners need. Imports torch."""

from kernels.device import DeviceInfo, DeviceUnavailableError, HostValues, select_device

__all__ = ["DeviceInfo", "DeviceUnavailableError", "HostValues", "select_device"]
