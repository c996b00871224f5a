"""Technique hints: a small named catalogue the Judge can cite in its plan (`JudgePlan.technique`)
and whose hint text then reaches the Coder's prompt. One table; the Judge's prompt lists the
techniques that apply to the run's backend and GPU, each with when it applies."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Technique(BaseModel):
    """One named optimisation technique."""

    name: str
    """What the Judge writes in `technique` (lower case, words joined by hyphens)."""
    summary: str
    """What it is, in one line (the Judge's list)."""
    applies_when: str
    """The evidence that calls for it (the Judge's list)."""
    hint: dict[str, str]
    """How to do it, per backend (the Coder's prompt, when the plan names the technique)."""
    archs: tuple[str, ...] = Field(default=())
    """GPU architectures it needs (`sm_90`); empty: any."""


TECHNIQUES = (
    Technique(
        name="single-pass",
        summary="read the data once: keep a row in registers, or fold passes into an online update",
        applies_when="the kernel reads the same elements more than once (a max pass, then a sum "
        "pass, then a normalising pass) and is memory-bound",
        hint={
            "triton": "Load the row once into a `tl.arange(0, BLOCK)` block (BLOCK = next power of "
            "two of the row) and do every reduction on it; for rows too long for registers, "
            "keep running statistics (e.g. a running max m and a sum rescaled by exp(m_old - "
            "m_new)) in one loop and write in a second.",
            "cuda": "Stage the row in registers (or shared memory when it does not fit) and do "
            "every reduction on that copy; for long rows keep running statistics (running max "
            "and rescaled sum) in one pass over global memory.",
        },
    ),
    Technique(
        name="vectorized-loads",
        summary="16-byte loads and stores per thread along the contiguous dimension",
        applies_when="memory-bound, the innermost dimension is contiguous, and the profile or "
        "roofline shows DRAM bandwidth well below peak",
        hint={
            "triton": "Index the contiguous dimension with one `tl.arange` block per program so "
            "each thread owns 4 consecutive fp32 (8 fp16/bf16) elements; tell the compiler with "
            "`tl.max_contiguous(tl.multiple_of(offs, 4), 4)` when the row start is aligned, and "
            "keep `num_warps` x 32 x 4 <= BLOCK.",
            "cuda": "Load and store through `float4` (or `__half2`/`uint4` for 16-bit types) "
            "when the pointer is 16-byte aligned and the length a multiple of the vector width; "
            "handle the tail with scalar code.",
        },
    ),
    Technique(
        name="multi-row-programs",
        summary="one program (block) handles several short rows at once",
        applies_when="rows are short (a few hundred elements or fewer) and numerous: lanes sit "
        "idle and per-program overhead dominates",
        hint={
            "triton": "Use a 2-D block `[ROWS, BLOCK_N]` (rows = pid * ROWS + tl.arange(0, "
            "ROWS)[:, None]), reduce along `axis=1`, mask both dimensions, grid = cdiv(n_rows, "
            "ROWS); pick ROWS so ROWS x BLOCK_N is 2-8k elements.",
            "cuda": "Give each warp one row (warp-shuffle reductions, no shared memory), and a "
            "block several warps/rows.",
        },
    ),
    Technique(
        name="split-reduction",
        summary="split a long reduction over several programs and combine the partials",
        applies_when="few rows with very long reductions: fewer programs than about twice the "
        "SM count, so most SMs idle",
        hint={
            "triton": "Launch (row, chunk) programs that write partial results (sums, or (max, "
            "sum) pairs) to a small fp32 buffer, then a second kernel (or the last program) "
            "combines them; `tl.atomic_add` is simpler for sums but its order is not "
            "deterministic.",
            "cuda": "Grid over (row, chunk); each block reduces its chunk and writes a partial; "
            "a second kernel or a last-block-done counter combines them.",
        },
    ),
    Technique(
        name="persistent-kernel",
        summary="launch about one program per SM, each looping over many tiles or rows",
        applies_when="many small independent tiles or rows, where per-program setup, the tail "
        "wave or the launch of thousands of programs costs time",
        hint={
            "triton": "grid = (min(n_tiles, NUM_SMS),) with NUM_SMS from "
            "`torch.cuda.get_device_properties(x.device).multi_processor_count`, and inside "
            "`for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):`.",
            "cuda": "gridDim = SM count (x occupancy), and a grid-stride loop over the tiles.",
        },
    ),
    Technique(
        name="fuse-epilogue",
        summary="do the elementwise work after a GEMM, convolution or reduction in the same kernel",
        applies_when="separate kernels (or a library call plus kernels) re-read an intermediate "
        "result from global memory",
        hint={
            "triton": "Apply bias, activation, scaling and the cast to the accumulator tile "
            "before the single `tl.store`.",
            "cuda": "Apply the epilogue to the accumulator in registers before the one store.",
        },
    ),
    Technique(
        name="tensor-core-tiles",
        summary="tile a matrix product for tensor cores, with grouped program order for L2 reuse",
        applies_when="compute-bound matrix products (GEMM, convolution as GEMM, attention) "
        "whose precision policy allows tensor-core inputs",
        hint={
            "triton": "Blocks of `tl.dot` with BLOCK_M/N in 64-256 and BLOCK_K 32-64 (multiples "
            "of 16), fp32 accumulator, `num_stages` 3-4 to pipeline loads, and GROUP_M grouped "
            "ordering of program ids.",
            "cuda": "Use WMMA/MMA fragments on 16x16 tiles staged through shared memory with "
            "double buffering (cp.async).",
        },
    ),
    Technique(
        name="hopper-tma-wgmma",
        summary="on Hopper, feed tensor cores from TMA copies with warp-group MMA",
        applies_when="large compute-bound matrix products on an sm_90 GPU where plain tiles "
        "reach well under the tensor-core roofline",
        hint={
            "triton": "Triton emits wgmma for `tl.dot` on sm_90 when tiles are multiples of 64 "
            "and num_warps is 4 or 8 (a warp group is 4 warps); load the tiles through TMA with "
            "`desc = tl.make_tensor_descriptor(ptr, shape, strides, block_shape)` and "
            "`desc.load([m, k])` (device-side descriptors need a scratch allocator: "
            "`triton.set_allocator(lambda size, align, stream: torch.empty(size, "
            "dtype=torch.int8, device='cuda'))`), pipelined with `num_stages` 3-4.",
            "cuda": "Use TMA (cp.async.bulk.tensor with a CUtensorMap) into shared memory and "
            "wgmma.mma_async from inline PTX; keep mbarrier-based multi-stage pipelining.",
        },
        archs=("sm_90", "sm_90a"),
    ),
    Technique(
        name="fewer-launches",
        summary="one launch instead of several, and no host work per call",
        applies_when="small shapes where the host launch time is close to the device time, or "
        "forward launches several kernels",
        hint={
            "triton": "Merge the kernels into one, compute grids and constants once, and avoid "
            "`.contiguous()` copies or allocations in forward that are not needed.",
            "cuda": "Merge the kernels into one and cache everything but the launch itself.",
        },
    ),
    Technique(
        name="occupancy-tuning",
        summary="fit registers and shared memory so enough warps stay resident",
        applies_when="the profile shows spills, high registers per thread or low achieved "
        "occupancy",
        hint={
            "triton": "Lower BLOCK or `num_warps` pressure per thread (smaller tiles, fewer live "
            "values), raise `num_warps` for wide blocks, and use `num_stages` 2 when shared "
            "memory limits residency.",
            "cuda": "Cap registers with `__launch_bounds__`, shrink per-thread arrays, and size "
            "blocks to a multiple of 32 that keeps several blocks per SM.",
        },
    ),
)


def names() -> list[str]:
    return [t.name for t in TECHNIQUES]


def find(name: str) -> Technique | None:
    """The technique of this name (case and spacing as a model might write it), or None."""
    wanted = "-".join(name.lower().replace("_", " ").split())
    return next((t for t in TECHNIQUES if t.name == wanted), None)


def applicable(arch: str | None) -> list[Technique]:
    """The techniques the Judge is offered: those for any GPU, and the architecture-specific
    ones when the run's GPU is that architecture or unknown (`arch` None)."""
    return [t for t in TECHNIQUES if not t.archs or arch is None or arch in t.archs]
