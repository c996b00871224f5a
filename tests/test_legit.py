"""Legitimate Triton and CUDA candidates across the catalogue are accepted.

On the CPU, Triton candidates run under the interpreter and must be `correct`; CUDA candidates
compile with nvcc and must be `compiled`. The same files are evaluated on the GPU by
`tests/test_gpu_evaluator.py`.
"""

import re
from pathlib import Path

import pytest

from forge.evaluator import EvalConfig, Status, evaluate, resolve_problem

LEGIT = sorted((Path(__file__).parent / "fixtures" / "legit").glob("*.py"))


def op_of(path: Path) -> str:
    """The catalogue problem a fixture solves: named by a docstring starting `Problem: <name>.`,
    else by the file name, triton_<op>, cuda_inline_<op> or cuda_nvrtc_<op>."""
    declared = re.match(r'"""Problem: ([\w-]+)\.', path.read_text())
    if declared:
        return declared.group(1)
    stem = path.stem
    for prefix in ("triton_", "cuda_inline_", "cuda_nvrtc_"):
        if stem.startswith(prefix):
            return stem[len(prefix) :]
    raise AssertionError(
        f"legit fixture {path.name} must be named triton_<op>, cuda_inline_<op> or cuda_nvrtc_<op>"
    )


def test_at_least_ten_legit_candidates_over_several_ops():
    assert len(LEGIT) >= 10
    assert len({op_of(p) for p in LEGIT}) >= 8
    assert any(p.stem.startswith("cuda_inline_") for p in LEGIT)
    assert any(p.stem.startswith("cuda_nvrtc_") for p in LEGIT)


TRITON = [p for p in LEGIT if p.stem.startswith("triton_")]


@pytest.mark.parametrize("path", TRITON, ids=[p.stem for p in TRITON])
def test_triton_candidate_is_correct_on_cpu(path):
    result = evaluate(resolve_problem(op_of(path)), path.read_text(), EvalConfig(device="cpu"))
    assert result.status is Status.correct, result.reasons
    assert result.checks and all(c.passed for c in result.checks)
    assert result.kernels_seen, "proof of work: the interpreter ran the candidate's kernel"
    assert not result.timing_meaningful and not result.timings
