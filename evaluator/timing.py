"""Timing on the GPU (runs in the worker; the host computes the statistics).

Per call: flush L2 by writing a buffer twice its size, record the start event, call, synchronize
the whole device (work on a side stream is caught, row 10), record the end event, and read the
host clock around the same span as a cross-check. The candidate and the live eager and
torch.compile baselines are interleaved in a shuffled order every trial, on input buffers that
rotate and are refilled with new data before every trial (row 9); a secret random choice of
about one trial in N has its candidate output re-verified (row 20: a call counter cannot know
which), and once more after the loop. The warm-up length is randomized too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
import time

import torch

_CUDART = None


def reset_persisting_l2() -> bool:
    """cudaCtxResetPersistingL2Cache (row 19). True when the call succeeded."""
    global _CUDART
    if _CUDART is None:
        candidates = [ctypes.util.find_library("cudart")]
        torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        candidates += glob.glob(os.path.join(torch_lib, "libcudart.so*"))
        candidates += glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib", "libcudart.so*"))
        candidates += ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
        for name in filter(None, candidates):
            try:
                _CUDART = ctypes.CDLL(name)
                break
            except OSError:
                continue
    if _CUDART is None:
        return False
    return _CUDART.cudaCtxResetPersistingL2Cache() == 0


def _timed_call(fn, args: list, flush: torch.Tensor):
    flush.fill_(1)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    out = fn(*args)
    torch.cuda.synchronize()
    end.record()
    end.synchronize()
    host_ms = (time.perf_counter() - t0) * 1e3
    return out, start.elapsed_time(end), host_ms


def _refill(slots: list, fresh: list) -> None:
    """New data in the same buffers each trial: a cache keyed on pointers or on a fingerprint of
    the data never hits (row 9), while the addresses still rotate."""
    for slot, new in zip(slots, fresh, strict=True):
        if isinstance(slot, torch.Tensor):
            slot.copy_(new)


def time_input_set(harness, input_set: dict) -> dict:
    job = harness.job
    name = input_set["name"]
    ref, cand = harness.build_models(input_set)
    seeds = job["timing_seeds"]
    buffers = [harness.make_inputs(input_set, seeds[i], i) for i in range(job["rotate_buffers"])]
    warm = harness.make_inputs(input_set, seeds[-1] ^ 0xA5A5, 0)
    impls = {"candidate": harness.guarded(cand, f"timed call on '{name}'")}
    if "eager" in job["baselines"]:
        impls["eager"] = ref
    if "compile" in job["baselines"]:
        impls["compiled"] = torch.compile(ref, dynamic=False)
    samples = {k: {"event_ms": [], "host_ms": []} for k in impls}
    l2_reset = reset_persisting_l2()
    with torch.no_grad():
        if "compiled" in impls:
            # torch.compile rebinds nn.Module methods and starts compile threads when it first runs:
            # verify the candidate left everything intact, let the baseline compile, then re-snapshot.
            harness._after_candidate_code(f"calls before timing '{name}'")
            for _ in range(job["warmup"]):
                impls["compiled"](*warm)
            torch.cuda.synchronize()
            harness.threads_before = threading.active_count()
            harness.identity.take()
        for _ in range(job["warmup"] + harness.rng.randrange(job["warmup"] + 1)):
            for key, fn in impls.items():
                if key == "candidate":
                    harness.call_candidate(cand, warm, f"warm-up on '{name}'")
                else:
                    fn(*warm)
        torch.cuda.synchronize()
        rechecks = 0
        checked = set(harness.rng.sample(range(job["trials"]), max(1, job["trials"] // job["recheck_every"])))
        for trial in range(job["trials"]):
            args = buffers[trial % len(buffers)]
            _refill(args, harness.make_inputs(input_set, seeds[len(buffers) + trial], trial))
            torch.cuda.synchronize()
            recheck = trial in checked
            order = list(impls)
            harness.rng.shuffle(order)
            if recheck:
                first = [k for k in ("candidate", "eager") if k in impls]
                order = first + [k for k in order if k not in first]
            outs = {}
            for key in order:
                out, ms, host_ms = _timed_call(impls[key], args, harness.flush_buffer)
                samples[key]["event_ms"].append(ms)
                samples[key]["host_ms"].append(host_ms)
                if recheck and key in ("candidate", "eager"):
                    outs[key] = out
                del out
            harness._after_candidate_code(f"timed call on '{name}'")
            if recheck and "eager" in outs:
                harness.record(name, trial, "timed", outs["candidate"], outs["eager"])
                rechecks += 1
            del outs
        fresh = harness.make_inputs(input_set, seeds[-1] ^ 0x5A5A, 1)
        out = harness.call_candidate(cand, fresh, f"forward on '{name}' after timing")
        expected = harness.reference(ref, fresh)
        harness.record(name, 0, "after_timing", out, expected)
        del expected
    return {"input_set": name, "samples": samples, "rechecks": rechecks, "persisting_l2_reset": l2_reset, "constants": input_set["constants"]}
