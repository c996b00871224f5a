"""Device time per call, without the host in series.

Protocol of one batch (`measure_batch`), the same for the candidate (in the runner) and for the
eager and torch.compile baselines (in the trusted process):

1. A sleep kernel holds the stream while the host queues the whole batch, so the host's launch
   overhead never sits inside a timed span: every span starts when the GPU reaches it, with the
   next work already queued. If the sleep ends before the host has queued everything (the GPU
   "starved"), the batch is reported as such and the caller repeats it with a longer sleep.
2. Per call: copy that call's fresh inputs into one of a few rotating buffers (new data every
   call, rows 9 and 13), flush L2 by zeroing a buffer twice its size, record the start event,
   call, record the end event, then clone the output (outside the span). The clone is taken on
   the same stream right after the end event, so work the candidate left running on another
   stream shows up as a wrong output when that call is verified (row 10).
3. One device-wide synchronize at the end.

The host time of each call (the time the Python call took to return while the GPU was still
asleep) is the launch overhead, reported apart from the device time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from forge.evaluator.result import quantile
from forge.evaluator.shared import cudart


def reset_persisting_l2() -> bool:
    """cudaCtxResetPersistingL2Cache (row 19). True when the call succeeded."""
    try:
        return cudart().cudaCtxResetPersistingL2Cache() == 0
    except OSError:
        return False


class L2Flush:
    """Zeroing a buffer of twice the L2 size evicts what the previous call left there."""

    def __init__(self) -> None:
        self.buffer = torch.empty(2 * l2_bytes(), dtype=torch.int8, device="cuda")

    def __call__(self) -> None:
        self.buffer.zero_()


@dataclass
class Batch:
    device_ms: list[float]
    host_ms: list[float]
    outputs: list[object] = field(default_factory=list)
    starved: bool = False
    span_ms: float = 0.0
    """Device time from the end of the sleep head to the last output's clone: every input copy,
    L2 flush, call and clone of the batch (with a ready-made output: the batch's fixed work)."""


def clone_output(out: object) -> object:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple | list):
        return type(out)(clone_output(o) for o in out)
    return out


ROTATING = 3
"""Copies of the inputs that baselines (here) and the candidate (in the runner) rotate through,
so that a call does not find its inputs in L2 where the last call left them."""


def rotation(input_bytes: int, l2_bytes: int) -> int:
    """Copies to rotate through: `ROTATING`, or one where the inputs are more than twice the L2
    (the flush before each call evicts them anyway, and a 6.4 GB set would need 12.8 GB more)."""
    return 1 if input_bytes > 2 * l2_bytes else ROTATING


def tensor_bytes(items: list) -> int:
    """Bytes of the tensors among `items`."""
    return sum(x.numel() * x.element_size() for x in items if isinstance(x, torch.Tensor))


def l2_bytes() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size


MEMORY_SHARE = 0.7
"""Of the GPU's free memory, what a batch's inputs and outputs may take; the rest is headroom
for the candidate's and the baselines' own temporaries."""


WORKSPACE_INPUTS = 3
"""Input-sized temporaries of the trusted process beside a batch's buffers: generating a call's
inputs (the tensor `get_inputs` makes, its distribution's temporaries) and the reference's
clone of them for a timed re-check. Without them, KernelBench L1/48 (8.7 GB per input, 113 GiB
free) got batches of 3 calls and its runner ran out of memory for its rotating copy (H200,
2026-12-02)."""


def calls_that_fit(
    batch: int, input_bytes: int, output_bytes: int, free_bytes: int, rotating: int = ROTATING
) -> int:
    """Calls per timed batch, at most `batch` and at least 1, whose inputs and outputs fit the
    free memory: each call has its inputs twice (this process's copy and the shared one the
    runner reads) and its output kept for re-verification; the rotating copies of both sides
    (`rotating` on each side), the `WORKSPACE_INPUTS` temporaries and the shared and reference
    outputs are there whatever the count."""
    per_call = 2 * input_bytes + output_bytes
    fixed = (2 * rotating + WORKSPACE_INPUTS) * input_bytes + 3 * output_bytes
    if per_call == 0:
        return batch
    return max(1, min(batch, int((free_bytes * MEMORY_SHARE - fixed) // per_call)))


SETTLE_MIN_MS = 1.0
"""Only calls this long or longer stop a set's timing early: there each timed call costs a
multi-GB input refill, while shorter calls are cheap to time and their run-to-run noise
(docs/benchmarks.md, Reproducibility) needs every trial asked for."""


def settled(device_ms: list[list[float]], at_least: int, spread: float | None) -> bool:
    """Whether every implementation's device times (one list each) number `at_least`, have a
    median of `SETTLE_MIN_MS` or more and spread, (p80 - p20) / median, by at most `spread`
    (None: never)."""
    if spread is None:
        return False
    for times in device_ms:
        if len(times) < at_least:
            return False
        ordered = sorted(times)
        median = statistics.median(ordered)
        p20, p80 = quantile(ordered, 0.2), quantile(ordered, 0.8)  # as TimingStats reports them
        if median < SETTLE_MIN_MS or (p80 - p20) / median > spread:
            return False
    return True


def rotating_slots(example: list, count: int) -> list[list]:
    return [
        [x.clone() if isinstance(x, torch.Tensor) else x for x in example] for _ in range(count)
    ]


def _fill(slot: list, fresh: list) -> None:
    for dst, src in zip(slot, fresh, strict=True):
        if isinstance(dst, torch.Tensor):
            dst.copy_(src, non_blocking=True)


def measure_batch(
    fn: Callable,
    staged: list[list],
    slots: list[list],
    flush: L2Flush,
    sleep_cycles: int,
    keep_outputs: bool = True,
) -> Batch:
    count = len(staged)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    awake, finished = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(sleep_cycles)
    awake.record()
    host_ms, outputs = [], []
    for i, fresh in enumerate(staged):
        slot = slots[i % len(slots)]
        _fill(slot, fresh)
        flush()
        starts[i].record()
        t0 = time.perf_counter()
        out = fn(*slot)
        host_ms.append((time.perf_counter() - t0) * 1e3)
        ends[i].record()
        if keep_outputs:
            outputs.append(clone_output(out))
        del out
    finished.record()
    starved = awake.query()
    torch.cuda.synchronize()
    device_ms = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    return Batch(device_ms, host_ms, outputs, starved, awake.elapsed_time(finished))


def sleep_cycles_per_ms() -> float:
    """Clock cycles of `torch.cuda._sleep` per millisecond on this GPU, measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 2_000_000
    torch.cuda._sleep(cycles // 10)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / max(start.elapsed_time(end), 1e-3)
