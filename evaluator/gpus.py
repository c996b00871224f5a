"""Measured ceilings of the GPUs Forge has been run on, for roofline percentages.

Numbers are measurements on the device machine (docs/benchmarks.md gives date and command),
not datasheet values: a large device-to-device copy (bytes read + written per second) and
cuBLAS matrix products (TF32 off for fp32).
"""

from __future__ import annotations

from pydantic import BaseModel


class GpuCeilings(BaseModel):
    name: str
    bandwidth_bytes_s: float
    fp32_flops_s: float
    half_flops_s: float


MEASURED = [
    # bench/ceilings.py on the device machine, 2026-11-21 (docs/benchmarks.md).
    GpuCeilings(name="H200", bandwidth_bytes_s=4.16e12, fp32_flops_s=50.8e12, half_flops_s=781e12),
    # 2026-11-22, the SXM part (HBM3); other H100s (PCIe, HBM2e) differ and stay unmeasured.
    GpuCeilings(
        name="H100 80GB HBM3", bandwidth_bytes_s=2.96e12, fp32_flops_s=51.5e12, half_flops_s=755e12
    ),
]


def ceilings_for(gpu_name: str) -> GpuCeilings | None:
    return next((g for g in MEASURED if g.name in gpu_name), None)


def floor_ms(ceilings: GpuCeilings, flops: float, bytes_moved: float, dtype: str) -> float:
    peak = ceilings.fp32_flops_s if dtype in ("float32", "float64") else ceilings.half_flops_s
    return max(flops / peak, bytes_moved / ceilings.bandwidth_bytes_s) * 1e3
