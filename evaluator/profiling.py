"""Profiling: Nsight Compute metrics for the candidate's kernels only, Triton compile metadata,
and torch.profiler kernel durations as the fallback when ncu is not usable."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from forge.evaluator.cuda_source import traced_base_name

# A focused set: what limits occupancy, how busy DRAM and the SMs are, cache hit rates, the main
# warp-stall reasons, and the bytes and FLOPs actually executed (for the roofline).
NCU_METRICS = [
    "gpu__time_duration.sum",
    "launch__registers_per_thread",
    "launch__block_size",
    "launch__grid_size",
    "launch__shared_mem_per_block_static",
    "launch__shared_mem_per_block_dynamic",
    "launch__occupancy_limit_registers",
    "launch__occupancy_limit_shared_mem",
    "launch__occupancy_limit_warps",
    "launch__occupancy_limit_blocks",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__maximum_warps_per_active_cycle_pct",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "l1tex__t_sector_hit_rate.pct",
    "lts__t_sector_hit_rate.pct",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    # 32-byte sectors the kernel's stores wrote into L2: every byte of an output written by a
    # kernel passes through L2 (DRAM writes lag behind it), so this proves who wrote the output.
    "lts__t_sectors_srcunit_tex_op_write.sum",
    "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum",
    "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum",
    "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum",
    "smsp__inst_executed_pipe_tensor.sum",
    "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio",
]
NCU_PRECISION_METRICS = {
    "sm__ops_path_tensor_src_tf32_dst_fp32.sum": "tf32",
    "sm__ops_path_tensor_src_bf16_dst_fp32.sum": "bf16",
    "sm__ops_path_tensor_src_fp16.sum": "fp16",
}
"""Tensor-core math by input type (Ampere and later): what precision the profiled call's
kernels computed in, counted from outside the runner (`compiled_code.ncu_uses`)."""
# `ncu --query-metrics` (Nsight Compute 2025.3.1, H200, 2026-12-01) lists these three counters
# (fp16 without a destination split); requested with the rest since tests/test_gpu_precision.py's
# Nsight Compute test ran there (2026-12-02). Ampere and later only: ncu refuses a whole profile
# over one metric a GPU cannot collect.
NCU_METRICS += list(NCU_PRECISION_METRICS)
NVTX_RANGE = "forge_profile"


def kernel_base_name(traced: str) -> str:
    """`(anonymous namespace)::softmax_rows_f32(float const*, float*, long, bool)` -> `softmax_rows_f32`;
    `void ns::k<128>(float*)` -> `k`; a Triton or extern "C" name is returned as is. The parsing
    lives with the rest of CUDA name scanning, in `forge.evaluator.cuda_source`."""
    return traced_base_name(traced)


def ncu_path() -> str | None:
    return shutil.which("ncu")


def ncu_command(log_file: Path) -> list[str]:
    return [
        ncu_path() or "ncu",
        "--target-processes",
        "all",
        # Default clock control pins base clocks (~20% slower than the boost clocks timing sees).
        "--clock-control",
        "none",
        "--nvtx",
        "--nvtx-include",
        f"{NVTX_RANGE}/",
        "--metrics",
        ",".join(NCU_METRICS),
        "--csv",
        "--page",
        "raw",
        "--log-file",
        str(log_file),
    ]


def parse_ncu_csv(text: str, kernel_names: list[str]) -> list[dict]:
    """Rows of `ncu --csv --page raw`, one per kernel launch, for the candidate's kernels."""
    start = text.find('"ID"')
    if start < 0:
        return []
    rows = list(csv.DictReader(io.StringIO(text[start:])))
    kernels = []
    for row in rows[1:] if rows and rows[0].get("ID", "").strip() == "" else rows:
        name = row.get("Kernel Name", "")
        if not name or (kernel_names and not any(k in name for k in kernel_names)):
            continue
        metrics = {}
        for key in NCU_METRICS:
            value = row.get(key, "").replace(",", "").strip()
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
        kernels.append({"name": name, "metrics": metrics})
    return kernels


def triton_kernel_metadata(module, kernel_names: list[str]) -> list[dict]:
    """Registers, spills and shared memory of each compiled Triton kernel of the candidate."""
    from triton.runtime.jit import JITFunction

    found = []
    for name in kernel_names:
        fn = getattr(module, name, None)
        # down to the JITFunction through @triton.autotune / @triton.heuristics wrappers (an
        # Autotuner's `cache` maps tuning keys to Configs, not devices to kernels)
        while fn is not None and not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
            fn = fn.fn
        for compiled in _compiled_kernels(fn):
            metadata = getattr(compiled, "metadata", None)
            found.append(
                {
                    "name": name,
                    "registers_per_thread": getattr(compiled, "n_regs", None),
                    "spills": getattr(compiled, "n_spills", None),
                    "shared_mem_bytes": getattr(metadata, "shared", None),
                    "num_warps": getattr(metadata, "num_warps", None),
                    "hash": str(getattr(compiled, "hash", "") or ""),
                }
            )
    return found


def _compiled_kernels(fn) -> list:
    if fn is None:
        return []
    caches = getattr(fn, "device_caches", None)
    if caches:
        return [k for entry in caches.values() for k in entry[0].values()]
    cache = getattr(fn, "cache", None)
    if isinstance(cache, dict):
        return [k for per_device in cache.values() for k in per_device.values()]
    return []
