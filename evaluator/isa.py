"""What number formats compiled GPU code computes in, read from its PTX or SASS text.

`scan_ptx` and `scan_sass` return one `Use` per kernel, format and kind of instruction:

- tensor-core instructions and their input types: PTX `mma.sync` (`...f32.tf32.tf32.f32`),
  `wgmma.mma_async` (`...f32.bf16.bf16`), `wmma.mma` (no input type named: fp16),
  `tcgen05.mma` (`kind::tf32`, `kind::f16`: fp16 or bf16, `half`); SASS `HMMA`, `HGMMA`
  (`.TF32`, `.BF16`, none: fp16), `QGMMA` (fp8), `IMMA`/`IGMMA` (int8), `DMMA` (fp64);
- PTX conversions that narrow a float (`cvt.rna.tf32.f32`, `cvt.rn.bf16x2.f32`, ...);
- PTX arithmetic in a half type (`fma.rn.f16x2`, `ex2.approx.ftz.bf16`, ...).

SASS is read for tensor-core instructions only: ptxas uses `HFMA2.MMA` and `HADD2.F32` to move
constants and widen values, so half-precision SASS opcodes do not mean half-precision math.
Plain fp32 code (`fma.rn.f32`, `FFMA`) yields no `Use`: fp32 is what every policy allows.
Pure text processing (no torch, no GPU): the evaluator's trusted process feeds it files it read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_NAMES = {
    "fp64": "fp64",
    "fp32": "fp32",
    "tf32": "TF32 (10-bit mantissa)",
    "fp16": "fp16",
    "bf16": "bf16",
    "half": "fp16 or bf16",
    "fp8": "fp8",
    "fp4": "fp4/fp6",
    "int8": "int8",
    "int4": "int4",
    "b1": "1-bit",
}
"""Every format a `Use` can name, with how a verdict spells it."""

MANTISSA_BITS = {"fp64": 52, "fp32": 23, "tf32": 10, "fp16": 10, "bf16": 7, "fp8": 3, "fp4": 1}

_PTX_TYPES = {
    "f64": "fp64",
    "f32": "fp32",
    "tf32": "tf32",
    "f16": "fp16",
    "f16x2": "fp16",
    "bf16": "bf16",
    "bf16x2": "bf16",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "e4m3x2": "fp8",
    "e5m2x2": "fp8",
    "e2m1x2": "fp4",
    "e2m3x2": "fp4",
    "e3m2x2": "fp4",
    "s32": "int32",
    "s8": "int8",
    "u8": "int8",
    "s4": "int4",
    "u4": "int4",
    "b1": "b1",
}
_TCGEN05_KINDS = {
    "kind::tf32": "tf32",
    "kind::f16": "half",
    "kind::f8f6f4": "fp8",
    "kind::mxf8f6f4": "fp8",
    "kind::mxf4": "fp4",
    "kind::mxf4nvf4": "fp4",
    "kind::i8": "int8",
}
_HALF_ARITHMETIC = {
    "add", "sub", "mul", "fma", "mad", "min", "max", "neg", "abs",
    "ex2", "tanh", "rcp", "sqrt", "div", "sin", "cos", "lg2",
}  # fmt: skip
_SASS_TYPES = {"TF32": "tf32", "BF16": "bf16", "F16": "fp16", "E4M3": "fp8", "E5M2": "fp8"}

PTX_ENTRY = re.compile(
    r"^\s*(?:\.(?:visible|weak|extern)\s+)*\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$.]+)",
    re.MULTILINE,
)
_PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)")
SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)", re.MULTILINE)
_SASS_INSTRUCTION = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)")

TENSOR_CORE, CONVERSION, ARITHMETIC = "tensor core", "conversion", "arithmetic"


@dataclass(frozen=True)
class Use:
    """Instructions of one kernel that compute in (or round to) one format."""

    kernel: str
    format: str
    unit: str
    """`tensor core` (matrix inputs), `conversion` (rounding a wider float to it) or
    `arithmetic` (scalar or paired math in it)."""
    instruction: str
    """The first such instruction, as written (`mma.sync.aligned.m16n8k8.row.col.f32.tf32...`)."""
    count: int

    def describe(self) -> str:
        what = {
            TENSOR_CORE: f"{FORMAT_NAMES[self.format]} tensor cores",
            CONVERSION: f"rounds to {FORMAT_NAMES[self.format]}",
            ARITHMETIC: f"{FORMAT_NAMES[self.format]} arithmetic",
        }[self.unit]
        return f"{what} ({self.instruction}, {self.count}x)"


def _strip_ptx_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def ptx_instruction_formats(opcode: str) -> list[tuple[str, str]]:
    """(unit, format) pairs one PTX opcode computes in beyond fp32/fp64; [] for everything else."""
    parts = opcode.split(".")
    head = parts[0]
    types = [_PTX_TYPES[p] for p in parts if p in _PTX_TYPES]
    if head == "tcgen05" and len(parts) > 1 and parts[1] == "mma":
        kinds = [_TCGEN05_KINDS[p] for p in parts if p in _TCGEN05_KINDS]
        return [(TENSOR_CORE, k) for k in kinds]
    if opcode.startswith(("mma.", "wmma.mma.", "wgmma.mma_async.")):
        if head == "wgmma" or len(types) == 3:
            inputs = types[1:]  # wgmma: .dtype.atype.btype (the accumulator is not named)
        elif len(types) >= 4:
            inputs = types[1:-1]  # mma / wmma: .dtype.atype.btype.ctype
        else:
            inputs = ["fp16"]  # mma / wmma with only .dtype.ctype named: f16 inputs
        wide = ("fp32", "fp64", "int32")
        return [(TENSOR_CORE, f) for f in dict.fromkeys(inputs) if f not in wide]
    if head == "cvt" and len(types) >= 2:
        dst, src = types[0], types[1]
        if (
            dst in MANTISSA_BITS
            and src in MANTISSA_BITS
            and MANTISSA_BITS[dst] < MANTISSA_BITS[src]
        ):
            return [] if dst == "fp32" else [(CONVERSION, dst)]
        return []
    if head in _HALF_ARITHMETIC and types and types[-1] in ("fp16", "bf16"):
        return [(ARITHMETIC, types[-1])]
    return []


def sass_instruction_formats(opcode: str) -> list[tuple[str, str]]:
    """(unit, format) of one SASS tensor-core opcode's inputs beyond fp32/fp64; [] otherwise."""
    parts = opcode.split(".")
    head = parts[0]
    if head in ("HMMA", "HGMMA"):
        types = [_SASS_TYPES.get(p, p) for p in parts[1:] if p in _SASS_TYPES or p == "F32"]
        # HMMA.<shape>.<accumulator>[.<input>]: no input type named means fp16 inputs
        return [(TENSOR_CORE, types[1] if len(types) > 1 else "fp16")]
    if head in ("QGMMA", "QMMA"):
        return [(TENSOR_CORE, "fp8")]
    if head in ("IMMA", "IGMMA"):
        return [(TENSOR_CORE, "int4" if {"S4", "U4"} & set(parts) else "int8")]
    if head == "BMMA":
        return [(TENSOR_CORE, "b1")]
    return []  # DMMA (fp64) and everything else


def _collect(
    lines: list[str], function: re.Pattern, instruction: re.Pattern, classify
) -> list[Use]:
    found: dict[tuple[str, str, str], list] = {}
    kernel = ""
    for line in lines:
        if header := function.match(line):
            kernel = header.group(1)
            continue
        match = instruction.search(line)
        if match is None:
            continue
        opcode = match.group(1).rstrip(";")
        for unit, fmt in classify(opcode):
            entry = found.setdefault((kernel, fmt, unit), [opcode, 0])
            entry[1] += 1
    return [
        Use(kernel=k, format=f, unit=u, instruction=first, count=n)
        for (k, f, u), (first, n) in found.items()
    ]


def scan_ptx(text: str) -> list[Use]:
    """Uses of formats beyond fp32/fp64 in PTX text, per `.entry` / `.func`."""
    lines = _strip_ptx_comments(text).splitlines()
    return _collect(lines, PTX_ENTRY, _PTX_INSTRUCTION, ptx_instruction_formats)


def scan_sass(text: str) -> list[Use]:
    """Tensor-core uses beyond fp32/fp64 in `cuobjdump -sass` / `nvdisasm` text, per function."""
    return _collect(text.splitlines(), SASS_FUNCTION, _SASS_INSTRUCTION, sass_instruction_formats)
