"""The runtime op monitor (forge.evaluator.monitor.AtenMonitor): vendor-library GEMMs and
convolutions are allowed but recorded, every other computing op is forbidden, and an output that
is a library call's result (or a view or copy of one) is told apart from one the candidate's own
kernel wrote. The static allowlist (forge.evaluator.static.rules) and the monitor's must agree:
every call the static check lets through runs under the monitor without a forbidden op."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from forge.evaluator.integrity import IdentitySnapshot
from forge.evaluator.monitor import LIBRARY_ATEN, AtenMonitor
from forge.evaluator.problem import resolve_problem
from forge.evaluator.static.rules import LIBRARY_CALLS, LIBRARY_MODULES

FIXTURES = Path(__file__).parent / "fixtures"

# One call per entry of the static table, with operands of the right ranks.
LIBRARY_CALL_ARGS = {
    "torch.matmul": lambda: (torch.randn(2, 4, 5), torch.randn(5, 3)),
    "torch.mm": lambda: (torch.randn(4, 5), torch.randn(5, 3)),
    "torch.bmm": lambda: (torch.randn(2, 4, 5), torch.randn(2, 5, 3)),
    "torch.addmm": lambda: (torch.randn(3), torch.randn(4, 5), torch.randn(5, 3)),
    "torch.baddbmm": lambda: (torch.randn(2, 4, 3), torch.randn(2, 4, 5), torch.randn(2, 5, 3)),
    "torch.nn.functional.linear": lambda: (torch.randn(4, 5), torch.randn(3, 5), torch.randn(3)),
    "torch.nn.functional.conv1d": lambda: (torch.randn(1, 3, 8), torch.randn(4, 3, 3)),
    "torch.nn.functional.conv2d": lambda: (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)),
    "torch.nn.functional.conv3d": lambda: (torch.randn(1, 3, 4, 4, 4), torch.randn(4, 3, 3, 3, 3)),
    "torch.nn.functional.conv_transpose1d": lambda: (torch.randn(1, 3, 8), torch.randn(3, 4, 3)),
    "torch.nn.functional.conv_transpose2d": lambda: (
        torch.randn(1, 3, 8, 8),
        torch.randn(3, 4, 3, 3),
    ),
    "torch.nn.functional.conv_transpose3d": lambda: (
        torch.randn(1, 3, 4, 4, 4),
        torch.randn(3, 4, 3, 3, 3),
    ),
}
LAYER_INPUTS = {
    "torch.nn.Linear": (3, 4),
    "torch.nn.Conv1d": (1, 4, 8),
    "torch.nn.Conv2d": (1, 4, 8, 8),
    "torch.nn.Conv3d": (1, 4, 5, 5, 5),
    "torch.nn.ConvTranspose1d": (1, 4, 8),
    "torch.nn.ConvTranspose2d": (1, 4, 8, 8),
    "torch.nn.ConvTranspose3d": (1, 4, 5, 5, 5),
}


def _resolve(full: str):
    obj = torch
    for part in full.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def test_the_call_tables_cover_the_static_allowlist() -> None:
    assert set(LIBRARY_CALL_ARGS) == LIBRARY_CALLS
    assert set(LAYER_INPUTS) == LIBRARY_MODULES


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("full", sorted(LIBRARY_CALLS))
def test_statically_allowed_calls_are_library_ops_at_run_time(full: str, grad: bool) -> None:
    args = LIBRARY_CALL_ARGS[full]()
    monitor = AtenMonitor()
    with torch.set_grad_enabled(grad), monitor:
        out = _resolve(full)(*args)
    assert monitor.forbidden == []
    assert monitor.library and {op.removeprefix("aten::") for op in monitor.library} <= LIBRARY_ATEN
    assert monitor.output_from_library(out)


@pytest.mark.parametrize("full", sorted(LIBRARY_MODULES))
def test_library_layers_are_library_ops_at_run_time(full: str) -> None:
    layer = _resolve(full)(4, 4) if full == "torch.nn.Linear" else _resolve(full)(4, 4, 3)
    x = torch.randn(*LAYER_INPUTS[full])
    monitor = AtenMonitor()
    with monitor:
        out = layer(x)
    assert monitor.forbidden == [] and monitor.library
    assert monitor.output_from_library(out)


def test_the_matmul_operator_and_other_pytorch_compute() -> None:
    x, w, a, b = torch.randn(2, 4, 5), torch.randn(5, 3), torch.randn(3, 5), torch.randn(5)
    monitor = AtenMonitor()
    with monitor:
        y = x @ w
        z = torch.relu(y)
        v = torch.mv(a, b)
    assert monitor.library == ["aten::mm"]
    assert monitor.forbidden == ["aten::relu", "aten::mv"]  # matrix-vector is not a library call
    assert monitor.output_from_library(y)
    assert not monitor.output_from_library(z) and not monitor.output_from_library(v)


def test_views_and_copies_of_a_library_result_are_library_results() -> None:
    x, w = torch.randn(6, 5), torch.randn(4, 5)
    monitor = AtenMonitor()
    with monitor:
        y = F.linear(x, w)
        views = [y.view(-1), y[1:3], y.t(), y.unsqueeze(0), y.reshape(2, 12), y.detach()]
        copies = [y.clone(), y.t().contiguous(), y.to(torch.float64), y.double().float()]
        into = torch.empty_like(y)
        into.copy_(y)
    assert monitor.forbidden == []
    for t in [y, *views, *copies, into]:
        assert monitor.output_from_library(t)
    assert monitor.output_from_library((torch.empty(3), [y[0]]))  # nested outputs


def test_an_output_the_candidate_wrote_itself_is_not_a_library_result() -> None:
    x, w = torch.randn(6, 5), torch.randn(4, 5)
    monitor = AtenMonitor()
    with monitor:
        y = torch.matmul(x, w.t())
        out = torch.empty_like(y)
        out.numpy()[:] = y.numpy() * 2.0  # stands in for a kernel: no ATen op writes `out`
        scratch = torch.zeros(1)
    assert monitor.forbidden == [] and monitor.library == ["aten::mm"]
    assert not monitor.output_from_library(out)
    assert not monitor.output_from_library(scratch)
    assert monitor.output_from_library(y)  # an epilogue written in place would count as library
    assert not AtenMonitor().output_from_library(y)  # another monitor saw no library call


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"forge_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _models(problem_name: str, fixture: Path):
    problem = resolve_problem(problem_name)
    namespace: dict = {"__name__": f"forge_test_problem_{problem_name}"}
    exec(compile(problem.source, problem_name, "exec"), namespace)
    namespace.update(problem.sets_for("cpu")[0].constants)
    dtype = getattr(torch, problem.dtype)
    torch.manual_seed(0)
    reference = namespace["Model"](*namespace["get_init_inputs"]()).to(dtype)
    candidate = _load(fixture).ModelNew(*namespace["get_init_inputs"]()).to(dtype)
    candidate.load_state_dict(reference.state_dict())
    inputs = [t.to(dtype) for t in namespace["get_inputs"]()]
    return problem, reference, candidate, inputs


@pytest.mark.parametrize(
    "problem_name,fixture,library,from_library",
    [
        ("matmul_bias_gelu", "legit/triton_gemm_cublas_epilogue.py", "aten::addmm", False),
        ("conv2d", "cheats/row17_library_alone.py", "aten::convolution", True),
    ],
    ids=["gemm_cublas_epilogue", "library_alone"],
)
def test_library_fixtures_under_the_interpreter(
    problem_name: str, fixture: str, library: str, from_library: bool, monkeypatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    problem, reference, candidate, inputs = _models(problem_name, FIXTURES / fixture)
    monitor = AtenMonitor()
    with torch.no_grad():
        expected = reference(*inputs)
        with monitor:
            out = candidate(*inputs)
    assert torch.allclose(out.float(), expected.float(), atol=problem.atol, rtol=problem.rtol)
    assert monitor.forbidden == [] and monitor.library == [library]
    assert monitor.output_from_library(out) is from_library


def test_monitor_keeps_library_storages_alive() -> None:
    """A freed library result's memory could be handed to the candidate's own output and pass
    as a library result (or the reverse): the monitor holds the storages while it lives."""
    monitor = AtenMonitor()
    with monitor:
        y = torch.mm(torch.randn(64, 64), torch.randn(64, 64))
        ptr = y.untyped_storage().data_ptr()
        del y
        fresh = [torch.empty(64, 64) for _ in range(8)]
    assert all(t.untyped_storage().data_ptr() != ptr for t in fresh)
    assert not any(monitor.output_from_library(t) for t in fresh)


def test_nn_modules_other_than_library_layers_are_forbidden() -> None:
    monitor = AtenMonitor()
    with monitor:
        nn.LayerNorm(4)(torch.randn(2, 4))
    assert monitor.forbidden and not monitor.library


def test_the_runners_start_up_leaves_torch_dynamo_unimported() -> None:
    """The monitor opts out of TorchDispatchMode's Dynamo wrapper, whose first call imports
    torch._dynamo and sympy (4.6 s of a runner's start-up on the H200 host): the runner's
    `prepare` runs the monitor once and imports neither."""
    code = (
        "import sys; from forge.evaluator.runner import prepare; prepare('cpu'); "
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_torch_rebinding_its_seed_function_is_not_a_patch_but_a_timer_swap_is() -> None:
    """torch._dynamo wraps torch.manual_seed when first imported, which may now happen mid-job;
    the identity check lets exactly that through (integrity.REBOUND_BY_TORCH)."""
    snapshot = IdentitySnapshot(object())
    snapshot.take()
    seed, elapsed = torch.manual_seed, torch.cuda.Event.elapsed_time
    try:
        torch.manual_seed = torch._disable_dynamo(seed)
        assert snapshot.changed() == []
        torch.cuda.Event.elapsed_time = lambda self, end: 0.0
        assert snapshot.changed() == ["torch.cuda.Event.elapsed_time"]
    finally:
        torch.manual_seed, torch.cuda.Event.elapsed_time = seed, elapsed
    assert snapshot.changed() == []
