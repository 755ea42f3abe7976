"""GPU memory from NVML (`nvidia-ml-py`, imported as `pynvml`), read when Prometheus scrapes.

NVML is the driver's own management library: one call per GPU, no I/O, so reading it at scrape
time (on the admin server's worker thread) is cheap. Memory info v2 (`nvmlDeviceGetMemoryInfo_v2`,
drivers R510+) reports `used` including the driver-reserved part, as `nvidia-smi` shows it; older
drivers fall back to v1, whose `used` is `total - free`, the same quantity.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import ModuleType
from typing import Any

from sentinel.gpu.readings import GpuMemory, Reading, failed

log = logging.getLogger("sentinel.gpu")

SOURCE = "nvml"


class NvmlReader:
    """Reads every GPU's memory. Build it with :meth:`open`; `nvml` is the `pynvml` module (or one shaped like it)."""

    def __init__(self, nvml: ModuleType | Any | None, handles: list[Any], problem: str | None = None) -> None:
        self._nvml = nvml
        self._handles = handles
        self._problem = problem
        self._v2 = True

    @classmethod
    def open(cls, *, required: bool, nvml: ModuleType | Any | None = None) -> NvmlReader | None:
        """Initialise NVML. Without a driver or GPU: None when NVML was only probed (`auto`), else a reader
        that reports the source as absent with the reason."""
        if nvml is None:
            try:
                import pynvml

                nvml = pynvml
            except ImportError:
                return cls(None, [], "nvidia-ml-py is not installed") if required else None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            if not required:
                log.debug("no NVML here (%s): GPU memory comes from other sources", exc)
                return None
            log.warning("NVML source configured but not available: %s", exc)
            return cls(None, [], f"NVML not available: {exc}")
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            return cls(None, [], f"NVML could not list GPUs: {exc}") if required else None
        if not handles and not required:
            nvml.nvmlShutdown()
            return None
        return cls(nvml, handles, None if handles else "NVML found no GPU")

    def read(self) -> Reading:
        now = time.monotonic()
        nvml = self._nvml
        if nvml is None or not self._handles:
            return failed(SOURCE, now, self._problem or "NVML not available")
        memory = []
        try:
            for index, handle in enumerate(self._handles):
                info = self._memory_info(nvml, handle)
                memory.append(GpuMemory(str(index), float(info.used), float(info.total)))
        except nvml.NVMLError as exc:
            return failed(SOURCE, now, f"NVML read failed: {exc}")
        return Reading(SOURCE, ok=True, at=now, memory=tuple(memory))

    def _memory_info(self, nvml: Any, handle: Any) -> Any:
        if self._v2:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            except nvml.NVMLError as exc:
                # Only a driver without the v2 call switches to v1; any other error is a failed read.
                if getattr(exc, "value", None) not in (
                    nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                    nvml.NVML_ERROR_NOT_SUPPORTED,
                ):
                    raise
                log.info("NVML memory info v2 unavailable (%s); using v1", exc)
                self._v2 = False
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None
