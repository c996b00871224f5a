"""Timed batches on the GPU (`forge.evaluator.timing`): what the trusted clock's cross-check is
allowed to explain must hold all of a batch's fixed work. Run with `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch

from forge.evaluator.timing import ROTATING, L2Flush, measure_batch, rotating_slots

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def copy_ms(x: torch.Tensor) -> float:
    """Device time of one clone of `x` (the best of five)."""
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        x.clone()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


def test_a_one_call_batch_span_holds_its_input_copy_and_output_clone():
    """A KernelBench-sized set is timed one call per batch; its null span (a call returning a
    ready output) must still count the call's input copy and output clone: 2 GiB in and out
    here, a few ms, more than the check's fixed slack once sets are several GB."""
    x = torch.randn(2**29, device="cuda")  # 2 GiB
    one_copy = copy_ms(x)
    batch = measure_batch(lambda t: x, [[x]], rotating_slots([x], ROTATING), L2Flush(), 0)
    assert batch.span_ms >= 1.8 * one_copy, (batch.span_ms, one_copy)
