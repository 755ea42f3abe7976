"""`FakeNvml`: stands in for the `pynvml` module (nvidia-ml-py) on machines without an NVIDIA GPU.

Shaped from the NVML API reference and nvidia-ml-py's bindings, and only as far as Sentinel calls
them: `nvmlInit`, `nvmlShutdown`, `nvmlDeviceGetCount`, `nvmlDeviceGetHandleByIndex`,
`nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)` (v2: a struct with `total`, `reserved`,
`free`, `used`, where `used` includes `reserved`; without `version`: v1, `used = total - free`), and
`NVMLError` carrying the NVML return code in `.value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Memory:
    total: int
    free: int
    used: int
    reserved: int = 0
    version: int = 0


class NVMLError(Exception):
    _strings = {
        3: "Not Supported",
        9: "Driver Not Loaded",
        12: "NVML Shared Library Not Found",
        13: "Function Not Found",
        15: "GPU is lost",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._strings.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class Gpu:
    total: int
    used: int
    reserved: int = 0


@dataclass
class FakeNvml:
    gpus: list[Gpu] = field(default_factory=list)
    init_error: int | None = None
    has_v2: bool = True
    lost: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    initialised: bool = False

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    nvmlMemory_v2 = 0x02000028

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= len(self.gpus):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> Memory:
        if not self.initialised:
            raise NVMLError(1)  # NVML_ERROR_UNINITIALIZED
        if handle in self.lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        gpu = self.gpus[handle]
        if version:
            self.calls.append("memory_v2")
            if not self.has_v2:
                raise NVMLError(self.NVML_ERROR_FUNCTION_NOT_FOUND)
            return Memory(gpu.total, gpu.total - gpu.used, gpu.used, gpu.reserved, 2)
        self.calls.append("memory_v1")
        return Memory(gpu.total, gpu.total - gpu.used, gpu.used)
