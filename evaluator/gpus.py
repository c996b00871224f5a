"""Measured ceilings of the GPUs Forge has been run on, for roofline percentages.

Numbers are measurements on the device machine (docs/benchmarks.md gives date and command),
not datasheet values: a large device-to-device copy (bytes read + written per second) and
cuBLAS matrix products (fp32 with TF32 off, fp32 with TF32 on, bf16). A ceiling not measured
yet is None, and the roofline under that precision is left out rather than guessed.
"""

from __future__ import annotations

from pydantic import BaseModel


class GpuCeilings(BaseModel):
    name: str
    bandwidth_bytes_s: float
    fp32_flops_s: float
    half_flops_s: float
    tf32_flops_s: float | None = None


MEASURED = [
    # bench/ceilings.py on the device machine, 2026-11-21; TF32 on 2026-12-01 (docs/benchmarks.md).
    GpuCeilings(
        name="H200",
        bandwidth_bytes_s=4.16e12,
        fp32_flops_s=50.8e12,
        half_flops_s=781e12,
        tf32_flops_s=404e12,
    ),
    # 2026-11-22, the SXM part (HBM3); other H100s (PCIe, HBM2e) differ and stay unmeasured.
    GpuCeilings(
        name="H100 80GB HBM3", bandwidth_bytes_s=2.96e12, fp32_flops_s=51.5e12, half_flops_s=755e12
    ),
]


class GpuProperties(BaseModel):
    """What torch.cuda.get_device_properties reported on a GPU Forge has run on."""

    name: str
    sm_count: int
    l2_mb: float
    arch: str


KNOWN = [
    # `forge optimize` on the device machine, 2026-11-22 (docs/benchmarks.md): the prompt's GPU block.
    GpuProperties(name="NVIDIA H200", sm_count=132, l2_mb=60.0, arch="sm_90"),
]


def properties_for(gpu_name: str) -> GpuProperties | None:
    """The known GPU whose name contains `gpu_name` (`H200`, `NVIDIA H200`), case-insensitively."""
    wanted = gpu_name.strip().lower()
    return next((g for g in KNOWN if wanted and wanted in g.name.lower()), None)


def ceilings_for(gpu_name: str) -> GpuCeilings | None:
    return next((g for g in MEASURED if g.name in gpu_name), None)


def peak_flops_s(ceilings: GpuCeilings, dtype: str, precision: str = "strict") -> float | None:
    """The FLOP rate of the roofline: the policy's tensor-core peak (`Policy.peak`), else the
    problem dtype's (fp32 FMA for fp32/fp64, the half-precision tensor cores otherwise)."""
    from forge.evaluator.precision import POLICIES

    peak = POLICIES[precision].peak or ("fp32" if dtype in ("float32", "float64") else "half")
    return {
        "fp32": ceilings.fp32_flops_s,
        "tf32": ceilings.tf32_flops_s,
        "half": ceilings.half_flops_s,
    }[peak]


def floor_ms(
    ceilings: GpuCeilings, flops: float, bytes_moved: float, dtype: str, precision: str = "strict"
) -> float | None:
    """max(flops / peak, bytes / bandwidth) in ms; None when the peak is not measured."""
    peak = peak_flops_s(ceilings, dtype, precision)
    if peak is None:
        return None
    return max(flops / peak, bytes_moved / ceilings.bandwidth_bytes_s) * 1e3
