"""Launch replay's recording side on the CPU (kernels_library/replay.py): `build_plan` fed real
tensors and launch records in the form the recorder produces (`LaunchRecord`, as `launch_record`
reads them from a Triton launch), the recorder's op log, and the switch. The C++ half (install,
replay, CUDA graphs) needs a GPU: tests/test_library_replay_gpu.py."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
import torch
from test_library_helpers import LEGIT

import forge.kernels_library as kl
from forge.kernels_library import replay
from forge.kernels_library.replay import (
    GENERATED,
    LaunchRecord,
    PlanAllocation,
    PlanOutput,
    RecordedCall,
    build_plan,
)

CPU = torch.device("cpu")
STREAM = 0x5000
FUNCTION = 0x7F00_1234


def launch(params, **changes) -> LaunchRecord:
    record = LaunchRecord(
        kernel="_softmax_kernel",
        interface=GENERATED,
        function=FUNCTION,
        grid=(5, 1, 1),
        stream=STREAM,
        num_warps=4,
        num_ctas=1,
        shared=0,
        cooperative=False,
        pdl=False,
        global_scratch=0,
        profile_scratch=0,
        hooks=False,
        params=tuple(params),
    )
    return record._replace(**changes)


def softmax_launch(x: torch.Tensor, y: torch.Tensor, cols: int = 127) -> LaunchRecord:
    """The softmax fixture's launch `_softmax_kernel(x, y, n_cols, stride)` on rows of `cols`."""
    return launch([("*fp32", x), ("*fp32", y), ("i32", cols), ("i32", cols)])


def softmax_call(**changes) -> RecordedCall:
    """A recorded `_softmax(x, -1, False)` served by the softmax fixture's forward: y =
    empty_like(x), one launch of (x, y, n_cols, stride)."""
    x = torch.randn(5, 127)
    y = torch.empty_like(x)
    call = RecordedCall(
        inputs=(x, -1, False),
        ops=["aten.empty_like.default"],
        allocations=[y],
        launches=[softmax_launch(x, y)],
        outputs=(y,),
        device=CPU,
        stream=STREAM,
    )
    return call._replace(**changes)


def aligned(t: torch.Tensor, offset: int = 0) -> bool:
    return (t.data_ptr() + offset) % 16 == 0


def test_a_softmax_call_becomes_one_allocation_and_one_launch():
    call = softmax_call()
    x, y = call.inputs[0], call.allocations[0]
    plan = build_plan(call)
    assert plan.allocations == (PlanAllocation((5, 127), (127, 1), torch.float32),)
    assert plan.outputs == (PlanOutput(0, True, (5, 127), (127, 1), 0),)
    (only,) = plan.launches
    assert (only.function, only.grid, only.block, only.shared) == (FUNCTION, (5, 1, 1), 128, 0)
    # the two scratch pointers the launchers append come after the kernel's own arguments
    assert only.sizes == (8, 8, 4, 4, 8, 8) and only.scratch == 2
    i32 = struct.pack("<i", 127) + bytes(4)
    assert only.params == bytes(16) + i32 + i32 + bytes(16)
    assert only.pointers == ((0, 0, 0, 0, aligned(x)), (1, 1, 0, 0, aligned(y)))


def test_a_reshaped_output_is_allocated_in_its_final_layout():
    x3 = torch.randn(2, 5, 127)
    x = x3.view(10, 127)  # the adapter's view of the input
    y = torch.empty_like(x)
    call = softmax_call(
        inputs=(x3, -1, False),
        ops=["aten.view.default", "aten.empty_like.default", "aten.view.default"],
        allocations=[y],
        launches=[softmax_launch(x, y)],
        outputs=(y.view(2, 5, 127),),
    )
    plan = build_plan(call)
    assert plan.allocations == (PlanAllocation((2, 5, 127), (635, 127, 1), torch.float32),)
    assert plan.outputs == (PlanOutput(0, True, (2, 5, 127), (635, 127, 1), 0),)


@pytest.mark.parametrize("reshape", ["aten.view.default", "aten.reshape.default"])
def test_the_runtimes_reshape_of_the_output_is_replayed_as_a_view(reshape):
    """The runtime reshapes a forward's 2-D output to the operator's shape: logged as a view by
    some torch builds and whole (`aten.reshape`) by others (torch 2.11 on the H200)."""
    x3 = torch.randn(3, 11, 127)
    y = torch.empty(33, 127)
    call = softmax_call(
        inputs=(x3, -1, False),
        ops=["aten.empty_like.default", reshape],
        allocations=[y],
        launches=[softmax_launch(x3, y)],
        outputs=(y.reshape(3, 11, 127),),
    )
    plan = build_plan(call)
    assert plan.outputs == (PlanOutput(0, True, (3, 11, 127), (1397, 127, 1), 0),)


def test_a_reshape_that_copied_is_not_replayed():
    x = torch.randn(8, 16)
    y = torch.empty(16, 8)
    copied = y.t().reshape(128)  # not viewable: a copy outside the plan's allocations
    call = softmax_call(
        inputs=(x, -1, False),
        ops=["aten.empty.memory_format", "aten.t.default", "aten.reshape.default"],
        allocations=[y],
        launches=[softmax_launch(x, y, 16)],
        outputs=(copied,),
    )
    assert build_plan(call).startswith("an output is not a tensor the forward allocated")


def test_pointers_into_an_input_keep_their_offset_and_alignment():
    x = torch.randn(8, 127)
    y = torch.empty(7, 127)
    call = softmax_call(
        inputs=(x, -1, False),
        ops=["aten.empty.memory_format", "aten.slice.Tensor"],
        allocations=[y],
        launches=[softmax_launch(x[1:], y)],
        outputs=(y,),
    )
    plan = build_plan(call)
    assert plan.launches[0].pointers[0] == (0, 0, 0, 508, aligned(x, 508))
    assert not aligned(x, 508) and aligned(x)  # 508 bytes in: no longer 16-byte aligned


def test_an_output_that_views_part_of_an_allocation_is_a_view_at_replay():
    x = torch.randn(10, 127)
    y = torch.empty(20, 127)
    call = softmax_call(
        inputs=(x, -1, False),
        ops=["aten.empty.memory_format", "aten.slice.Tensor"],
        allocations=[y],
        launches=[softmax_launch(x, y[5:])],
        outputs=(y[5:15],),
    )
    plan = build_plan(call)
    assert plan.allocations == (PlanAllocation((20, 127), (127, 1), torch.float32),)
    assert plan.outputs == (PlanOutput(0, False, (10, 127), (127, 1), 635),)
    assert plan.launches[0].pointers[1] == (1, 1, 0, 5 * 127 * 4, aligned(y, 5 * 127 * 4))


def test_allocations_nothing_uses_are_left_out_and_the_rest_renumbered():
    x = torch.randn(5, 127)
    unused, y = torch.empty(3), torch.empty_like(x)
    call = softmax_call(
        ops=["aten.empty.memory_format", "aten.empty_like.default"],
        inputs=(x, -1, False),
        allocations=[unused, y],
        launches=[softmax_launch(x, y)],
        outputs=(y,),
    )
    plan = build_plan(call)
    assert [a.sizes for a in plan.allocations] == [(5, 127)]
    assert plan.outputs[0].allocation == 0 and plan.launches[0].pointers[1][1:3] == (1, 0)


def test_scalars_are_packed_as_the_launchers_pack_them():
    call = softmax_call()
    x, y = call.inputs[0], call.allocations[0]
    scalars = [
        ("fp32", 0.1),
        ("fp16", 1.5),
        ("bf16", -2.75),
        ("fp64", 0.25),
        ("i64", -3),
        ("u64", 2**64 - 1),
        ("u32", 7),
        ("i8", -1),
        ("i16", 300),
    ]
    plan = build_plan(call._replace(launches=[launch([("*fp32", x), ("*fp32", y), *scalars])]))
    only = plan.launches[0]
    assert only.sizes == (8, 8, 4, 2, 2, 8, 8, 8, 4, 1, 2, 8, 8)
    slots = [only.params[8 * i : 8 * i + size] for i, size in enumerate(only.sizes)]
    assert slots[2:11] == [
        struct.pack("<f", 0.1),
        struct.pack("<e", 1.5),
        b"\x30\xc0",  # bf16: the top half of float32 -2.75 (0xC0300000)
        struct.pack("<d", 0.25),
        struct.pack("<q", -3),
        b"\xff" * 8,
        struct.pack("<I", 7),
        b"\xff",
        struct.pack("<h", 300),
    ]
    assert all(
        only.params[8 * i + size : 8 * i + 8] == bytes(8 - size)
        for i, size in enumerate(only.sizes)
    )


def with_launch(**changes):
    def change(call: RecordedCall) -> RecordedCall:
        return call._replace(launches=[call.launches[0]._replace(**changes)])

    return change


def with_param(index: int, param):
    def change(call: RecordedCall) -> RecordedCall:
        params = list(call.launches[0].params)
        params[index] = param(call) if callable(param) else param
        return call._replace(launches=[call.launches[0]._replace(params=tuple(params))])

    return change


REFUSALS = {
    "a compute op": (
        lambda c: c._replace(ops=[*c.ops, "aten.mul.Tensor"]),
        "the forward runs aten.mul.Tensor",
    ),
    "a copy": (lambda c: c._replace(ops=[*c.ops, "aten.copy_.default"]), "aten.copy_.default"),
    "item()": (
        lambda c: c._replace(ops=[*c.ops, "aten._local_scalar_dense.default"]),
        "aten._local_scalar_dense.default",
    ),
    "a custom op": (lambda c: c._replace(ops=[*c.ops, "mylib.foo.default"]), "mylib.foo.default"),
    "no launch": (lambda c: c._replace(launches=[]), "the forward made no Triton launch"),
    "global scratch": (with_launch(global_scratch=64), "needs global scratch memory"),
    "profile scratch": (with_launch(profile_scratch=64), "needs profile scratch memory"),
    "a cluster": (with_launch(num_ctas=2), "a cluster launch"),
    "cooperative": (with_launch(cooperative=True), "a cooperative launch"),
    "pdl": (with_launch(pdl=True), "a programmatic dependent launch"),
    "a hook": (with_launch(hooks=True), "a Triton launch hook"),
    "another stream": (with_launch(stream=STREAM + 1), "a stream other than the current one"),
    "big shared memory": (with_launch(shared=229 * 1024), "shared memory above 228 KiB"),
    "an unknown launcher": (
        with_launch(interface="unsupported Triton launcher x.Launcher"),
        "_softmax_kernel: unsupported Triton launcher x.Launcher",
    ),
    "an i1 argument": (with_param(2, ("i1", 1)), "an i1 argument"),
    "a TMA descriptor": (with_param(2, ("tensordesc<fp32[16, 16]>", None)), "TMA descriptor"),
    "an unknown type": (with_param(2, ("fp8e4nv", 1.0)), "an argument of type fp8e4nv"),
    "an unpackable int": (with_param(2, ("i32", 2**40)), "cannot be packed"),
    "a foreign pointer": (
        with_param(1, ("*fp32", torch.empty(5, 127))),
        "pointer argument 1 is neither in an input nor in a tensor the forward allocated",
    ),
    "an address as an integer": (
        with_param(3, lambda c: ("i64", c.inputs[0].data_ptr() + 4)),
        "integer argument 3 holds an address in a tensor",
    ),
    "an output that is an input": (
        lambda c: c._replace(outputs=(c.inputs[0],)),
        "an output is not a tensor the forward allocated",
    ),
    "a non-tensor output": (lambda c: c._replace(outputs=(3,)), "returned a int, not a tensor"),
    "too many parameters": (
        lambda c: c._replace(
            launches=[c.launches[0]._replace(params=c.launches[0].params + (("i32", 2),) * 61)]
        ),
        "more than 64 kernel parameters",
    ),
}


@pytest.mark.parametrize("change, reason", REFUSALS.values(), ids=REFUSALS.keys())
def test_calls_that_are_not_replayed_say_why(change, reason):
    assert isinstance(build_plan(softmax_call()), replay.Plan)
    why = build_plan(change(softmax_call()))
    assert isinstance(why, str) and reason in why


def test_aliased_inputs_are_ambiguous_and_not_replayed():
    base = torch.randn(10, 127)
    q, k = base[:5], base[:5]  # two arguments over the same memory
    call = softmax_call()
    y = call.allocations[0]
    why = build_plan(
        call._replace(
            inputs=(q, k),
            launches=[softmax_launch(q, y)],
        )
    )
    assert why == "_softmax_kernel: pointer argument 0 lies in several tensors (aliased inputs)"


def test_launcher_params_flatten_tuples_and_skip_constexprs():
    x, y = torch.randn(3), torch.randn(4)
    signature = ["*fp32", ("i32", "constexpr", "*fp16"), "constexpr", "fp32"]
    params = replay.launcher_params(signature, [x, (3, 16, y), 128, 0.5])
    assert params == (("*fp32", x), ("i32", 3), ("*fp16", y), ("fp32", 0.5))
    with pytest.raises(ValueError, match="2 arguments for a signature of 4"):
        replay.launcher_params(signature, [x, 1])


def test_a_launch_through_an_unknown_launcher_is_recorded_and_refused():
    """`launch_record` on what Triton's JIT passes `CompiledKernel.run` (a kernel with its
    `src.signature`, and the launcher): a launcher that is not Triton's CUDA launcher is named."""
    call = softmax_call()
    x, y = call.inputs[0], call.allocations[0]
    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n_cols": "i32", "stride": "i32"}
    signature["BLOCK"] = "constexpr"
    kernel = SimpleNamespace(name="_softmax_kernel", src=SimpleNamespace(signature=signature))
    args = (5, 1, 1, STREAM, FUNCTION, (4, 1, 0), None, None, None, x, y, 127, 127, 128)
    record = replay.launch_record(kernel, object(), args)
    assert record.params == (("*fp32", x), ("*fp32", y), ("i32", 127), ("i32", 127))
    assert (record.grid, record.num_warps, record.num_ctas, record.shared) == ((5, 1, 1), 4, 1, 0)
    assert record.interface == "unsupported Triton launcher builtins.object"
    assert build_plan(call._replace(launches=[record])) == (
        "_softmax_kernel: unsupported Triton launcher builtins.object"
    )
    short = replay.launch_record(kernel, object(), args[:5])
    assert short.interface.startswith("unexpected Triton launch arguments (ValueError")


def test_tritons_empty_hook_chains_are_no_hook_and_a_hook_added_is_one():
    """Triton >= 3.4 passes its `HookChain`s to every launch, empty by default (the H200 run
    with Triton 3.6 refused every call as "a Triton launch hook is installed" before this)."""
    from triton import knobs

    call = softmax_call()
    x, y = call.inputs[0], call.allocations[0]
    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n_cols": "i32", "stride": "i32"}
    kernel = SimpleNamespace(name="_softmax_kernel", src=SimpleNamespace(signature=signature))
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    args = (5, 1, 1, STREAM, FUNCTION, (4, 1, 0), None, enter, leave, x, y, 127, 127)
    assert not replay.launch_record(kernel, object(), args).hooks

    def hook(metadata):
        return None

    enter.add(hook)
    try:
        assert replay.launch_record(kernel, object(), args).hooks
    finally:
        enter.remove(hook)
    assert replay.launch_record(kernel, object(), (*args[:7], hook, None, *args[9:])).hooks


def test_the_recorder_logs_aten_ops_in_the_form_build_plan_reads():
    x = torch.randn(4, 6)
    with replay.recording() as rec:
        y = torch.empty_like(x)
        x.contiguous().reshape(2, 12)
        y.t()
        w = x.new_empty((3,))
    assert rec.problem is None
    assert [op for op in rec.ops if op != "aten.detach.default"] == [
        "aten.empty_like.default",
        "aten.view.default",
        "aten.t.default",
        "aten.new_empty.default",
    ]
    assert [a.data_ptr() for a in rec.allocations] == [y.data_ptr(), w.data_ptr()]
    assert replay._op_refusal(rec.ops) is None
    with replay.recording() as rec:
        torch.empty_like(x).add_(1)
    assert "the forward runs aten.add_.Tensor" in replay._op_refusal(rec.ops)


def test_recording_restores_tritons_launcher_property():
    from triton.compiler.compiler import CompiledKernel

    original = CompiledKernel.__dict__["run"]
    with replay.recording():
        assert CompiledKernel.__dict__["run"] is not original
    assert CompiledKernel.__dict__["run"] is original


def test_replay_is_switched_by_argument_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(replay.REPLAY_ENV, raising=False)
    assert replay.chosen_replay(None) and not replay.chosen_replay(False)
    monkeypatch.setenv(replay.REPLAY_ENV, "0")
    assert not replay.chosen_replay(None) and replay.chosen_replay(True)
    monkeypatch.setenv(replay.REPLAY_ENV, "sometimes")
    with pytest.raises(kl.LibraryError, match="FORGE_KERNELS_REPLAY='sometimes' is not one of"):
        kl.enable(path=tmp_path, devices=["cpu"], route="python")


def test_only_triton_entries_whose_launches_the_recorder_sees_are_recorded():
    triton_source = (LEGIT / "triton_softmax.py").read_text()
    cuda_source = (LEGIT / "cuda_inline_softmax.py").read_text()
    assert replay.entry_problem("triton", triton_source) is None
    assert replay.entry_problem("cuda", cuda_source) == (
        "a cuda entry (only Triton launches are recorded)"
    )
    assert replay.entry_problem("triton", cuda_source + triton_source) == (
        "the entry also compiles CUDA code, whose launches the recorder cannot see"
    )
