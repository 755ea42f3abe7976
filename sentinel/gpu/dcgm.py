"""GPU memory from an NVIDIA DCGM exporter's `/metrics`.

DCGM field identifiers (NVIDIA DCGM documentation): `DCGM_FI_DEV_FB_USED`, `DCGM_FI_DEV_FB_FREE`,
`DCGM_FI_DEV_FB_RESERVED` (newer drivers) and `DCGM_FI_DEV_FB_TOTAL` (when enabled), all in MiB, one
series per GPU (label `gpu`, plus `GPU_I_ID` per MIG instance). DCGM's own used-percent is
`(used + reserved) / total`, which is what NVML's memory info v2 reports as `used`; the same
definition is used here so both sources agree.
"""

from __future__ import annotations

from collections import defaultdict

from sentinel.gpu.exposition import samples
from sentinel.gpu.readings import MIB, GpuMemory, Reading, SourceAbsent

FIELDS = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_DEV_FB_TOTAL")


def read_dcgm(text: str, at: float) -> Reading:
    by_gpu: dict[str, dict[str, float]] = defaultdict(dict)
    for sample in samples(text, FIELDS):
        gpu = sample.labels.get("gpu", "0")
        if instance := sample.labels.get("GPU_I_ID"):
            gpu = f"{gpu}/{instance}"
        by_gpu[gpu][sample.name] = sample.value
    memory = []
    for gpu, fields in sorted(by_gpu.items()):
        used = fields.get("DCGM_FI_DEV_FB_USED")
        free = fields.get("DCGM_FI_DEV_FB_FREE")
        if used is None or free is None:
            continue
        reserved = fields.get("DCGM_FI_DEV_FB_RESERVED", 0.0)
        total = fields.get("DCGM_FI_DEV_FB_TOTAL") or used + free + reserved
        memory.append(GpuMemory(gpu, (used + reserved) * MIB, total * MIB))
    if not memory:
        raise SourceAbsent("no DCGM_FI_DEV_FB_USED/FREE in the exposition (is this a DCGM exporter?)")
    return Reading("dcgm", ok=True, at=at, memory=tuple(memory))
