"""Precision policies: which number formats a candidate may compute in, stated and checked.

One table (`POLICIES`) says, per policy, what the Coder's prompt tells it, which formats the
verdict accepts in the candidate's compiled code, how the reference and the baselines run
(TF32 flags, autocast) and which peak the roofline uses:

- `strict`: the problem's own dtype or wider (fp32 math for an fp32 problem).
- `tf32`: fp32 matmul/convolution inputs may be rounded to TF32 on tensor cores; the
  baselines run with `allow_tf32` on for cuBLAS and cuDNN.
- `bf16` / `fp16`: matmul/convolution inputs may be bf16 / fp16 (TF32 too); the reference's
  error and the baselines come from `torch.autocast` in that dtype.

A problem accepts `strict` and, when its dtype is float32, `tf32`; `forge_precisions` in the
problem file names others. The trusted side derives each comparison's atol from the reference's
own error on the same inputs (`scaled_tolerance`): under `strict` its rounding in the problem's
dtype, against a float64 run of it; under another policy, how far the policy moves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from forge.evaluator.isa import FORMAT_NAMES
from forge.evaluator.problem import ProblemError

SAFETY = 4.0
"""Each comparison's atol is this many times the reference's own largest error on the same
inputs (never below the problem's atol); rtol stays the problem's.

Under strict the error is |reference - its float64 run|: the rounding of the PyTorch reference
in the problem's dtype, which a kernel that computes the same math more accurately (a float64
accumulator, another summation order) does not share; where the output nearly cancels (a sum
over a GEMM's outputs) that error alone exceeds atol + rtol*|ref|. An accurate kernel stays
within about 1x of it, one with another fp32 summation order within about 2x; kernels with
operands rounded to TF32 or bf16 (rounding units 2^13 and 2^16 times fp32's) missed the
widened atol by 100-4000x on a cancelling GEMM sum (tests/test_precision.py), and the
compiled-code check rejects those formats anyway.

Under another policy the error is |reference under the policy - strict reference|. For tf32 it
is taken with the operands cut to TF32 (as tensor cores do with fp32 inputs), so a kernel that
cuts or rounds them stays within ~1x of it; 4x leaves room for accumulation order and small
sets. The bound is not what tells a bf16 kernel from a TF32 one (bf16 errs only ~3x more than
cut TF32): the compiled-code check does."""

DTYPE_FORMATS = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Policy:
    name: str
    summary: str
    """One line: what the policy allows (CLI help, `forge show`)."""
    meaning: str
    """What the Coder is told the policy means for its kernels."""
    extra_formats: frozenset[str] = field(default_factory=frozenset)
    """Formats allowed beyond the problem dtype's own and wider ones."""
    tf32: bool = False
    """cuBLAS/cuDNN TF32 for fp32 products: in the baselines, the reference's error measurement,
    and the candidate's own library calls."""
    autocast: str = ""
    """torch.autocast dtype for the baselines and the reference's error measurement ('' none)."""
    peak: str = ""
    """Roofline peak: `tf32` or `half` tensor-core FLOP rate ('' the problem dtype's)."""


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            name="strict",
            summary="the problem's dtype or wider throughout (fp32 math for fp32 problems)",
            meaning=(
                "compute in the problem's dtype or wider. For fp32 data that means fp32 "
                "multiplies and adds: no TF32, bf16 or fp16 tensor cores and no rounding to a "
                "narrower float. In Triton, `tl.dot` on fp32 tiles uses TF32 unless you pass "
                '`input_precision="ieee"`; cuBLAS/cuDNN calls run with TF32 off.'
            ),
        ),
        Policy(
            name="tf32",
            summary="TF32 tensor cores allowed for fp32 matmul/convolution inputs",
            meaning=(
                "fp32 matrix-product and convolution inputs may be rounded to TF32 (10-bit "
                "mantissa) on tensor cores, accumulating in fp32 (`tl.dot` on fp32 tiles does "
                "this by default); everything else stays fp32. The baselines run with TF32 on "
                "too, so the speedup compares like with like."
            ),
            extra_formats=frozenset({"tf32"}),
            tf32=True,
            peak="tf32",
        ),
        Policy(
            name="bf16",
            summary="bf16 (or TF32) tensor cores allowed for matmul/convolution inputs",
            meaning=(
                "matrix-product and convolution inputs may be rounded to bf16 (or TF32) on "
                "tensor cores, accumulating in fp32; the baselines run under "
                "torch.autocast(bfloat16)."
            ),
            extra_formats=frozenset({"tf32", "bf16", "half"}),
            tf32=True,
            autocast="bfloat16",
            peak="half",
        ),
        Policy(
            name="fp16",
            summary="fp16 (or TF32) tensor cores allowed for matmul/convolution inputs",
            meaning=(
                "matrix-product and convolution inputs may be rounded to fp16 (or TF32) on "
                "tensor cores, accumulating in fp32; the baselines run under "
                "torch.autocast(float16)."
            ),
            extra_formats=frozenset({"tf32", "fp16", "half"}),
            tf32=True,
            autocast="float16",
            peak="half",
        ),
    )
}
STRICT = "strict"


class PrecisionError(ProblemError):
    """A precision that does not exist, or that the problem does not accept."""


def check_name(name: str, where: str = "--precision") -> str:
    if name not in POLICIES:
        raise PrecisionError(
            f"{where}: unknown precision '{name}'; use one of {', '.join(POLICIES)}"
        )
    return name


def accepted(declared: object, dtype: str, label: str) -> list[str]:
    """The policies a problem accepts: `forge_precisions` (validated; `strict` always included),
    else `strict`, plus `tf32` for a float32 problem."""
    if declared is None:
        return [STRICT, "tf32"] if dtype == "float32" else [STRICT]
    if not isinstance(declared, list | tuple) or not all(isinstance(p, str) for p in declared):
        raise PrecisionError(
            f"{label}: forge_precisions must be a list of names, e.g. ['strict', 'tf32']"
        )
    for name in declared:
        check_name(name, f"{label}: forge_precisions")
    return [STRICT, *(p for p in POLICIES if p in declared and p != STRICT)]


def resolve(requested: str | None, problem_name: str, problem_accepts: list[str]) -> str:
    """The run's policy: `requested` (None: strict), which the problem must accept."""
    name = check_name(requested) if requested is not None else STRICT
    if name not in problem_accepts:
        raise PrecisionError(
            f"problem '{problem_name}' does not accept --precision {name} (it accepts "
            f"{', '.join(problem_accepts)}; a problem file names more with forge_precisions)"
        )
    return name


def allowed_formats(policy: str, dtype: str) -> list[str]:
    """Formats a candidate may compute in under `policy` for a problem of `dtype` (fp32 and
    fp64 always: the scanner reports only narrower ones)."""
    own = {"fp64", "fp32", DTYPE_FORMATS.get(dtype, "fp32")}
    if own & {"fp16", "bf16"}:
        own.add("half")
    return [f for f in FORMAT_NAMES if f in own | POLICIES[policy].extra_formats]


def scaled_tolerance(atol: float, reference_error: float) -> float:
    """A comparison's atol: `SAFETY` times the reference's own largest error (under strict
    against its float64 run, under another policy against the strict reference), never below
    the problem's atol."""
    return max(atol, SAFETY * reference_error)


def prompt_facts(policy: str, dtype: str, atol: float, rtol: float) -> dict:
    """What the prompts say about the policy, from the table the verdict enforces."""
    entry = POLICIES[policy]
    allowed = allowed_formats(policy, dtype)
    return {
        "name": entry.name,
        "meaning": entry.meaning,
        "allowed": [FORMAT_NAMES[f] for f in allowed if f != "half"],
        "tolerance": tolerance_rule(entry.name, dtype, atol, rtol),
    }


def tolerance_rule(policy: str, dtype: str, atol: float, rtol: float) -> str:
    """The comparison's tolerance in words, as the trusted side derives it."""
    if policy == STRICT and dtype == "float64":
        return f"atol={atol:g}, rtol={rtol:g}"
    if policy == STRICT:
        return (
            f"rtol={rtol:g}, and for each comparison atol = {SAFETY:g} x the largest difference "
            f"between the PyTorch reference and a float64 run of it on the same inputs, i.e. its "
            f"own rounding error in {dtype} (never below {atol:g}; measured on the correctness "
            "inputs, the largest reused for timed calls)"
        )
    return (
        f"rtol={rtol:g}, and for each comparison atol = {SAFETY:g} x the largest error of the "
        f"PyTorch reference itself under {policy} on the same inputs (never below {atol:g})"
    )


def violations(uses: list, allowed: list[str], policy: str) -> list[str]:
    """One line per kernel that computes in a format the policy does not allow; `uses` are
    `KernelPrecision`-like objects (kernel, formats, evidence, source)."""
    lines = []
    for use in uses:
        beyond = [f for f in use.formats if f not in allowed]
        if beyond:
            names = ", ".join(FORMAT_NAMES[f] for f in beyond)
            hint = suggestion(beyond)
            lines.append(
                f"precision: kernel `{use.kernel}` computes in {names} ({use.source}: "
                f"{'; '.join(use.evidence[:2])}), which --precision {policy} does not allow"
                f"{hint}"
            )
    return lines


def suggestion(beyond: list[str]) -> str:
    wider = [p.name for p in POLICIES.values() if set(beyond) <= p.extra_formats]
    policies = f"run under --precision {wider[0]} if the problem accepts it, or " if wider else ""
    return f"; {policies}keep the math in the allowed formats"


_TL_DOT = re.compile(r"\btl\.dot\s*\(")
_IEEE = re.compile(r"input_precision\s*=\s*['\"]ieee['\"]")


def cpu_note(source: str, policy: str, dtype: str) -> str:
    """What can be said about precision on the CPU, where the Triton interpreter has no PTX."""
    note = "precision not detected on cpu (no GPU code is compiled and inspected there)"
    if (
        policy == STRICT
        and dtype == "float32"
        and _TL_DOT.search(source)
        and not _IEEE.search(source)
    ):
        note += (
            '; on a GPU, tl.dot on fp32 tiles uses TF32 tensor cores unless input_precision="ieee" '
            "is passed, which --precision strict rejects"
        )
    return note
