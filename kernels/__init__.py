"""Device selection (npu / cuda / cpu) and the compute kernels the runners need. Imports torch."""

from kernels.device import DeviceInfo, DeviceUnavailableError, select_device

__all__ = ["DeviceInfo", "DeviceUnavailableError", "select_device"]
