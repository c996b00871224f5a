"""Library keys: versions, shape buckets and machine compatibility. Pure Python (no torch).

An entry is keyed by operator, dtype, shape bucket, GPU architecture and the torch / triton /
CUDA major.minor it was verified with. Shape buckets follow the problem's
`forge_shape_buckets`: `exact` keeps a dimension as it is (weight-like dimensions: hidden size,
head_dim, number of classes), `pow2` rounds it up to the next power of two (batch-like
dimensions: rows, tokens, sequence length), so 3000 and 4096 rows share bucket 4096 and 4097
rows fall in bucket 8192. A constant the problem does not declare a rule for is exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RULES = ("exact", "pow2")
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")


def major_minor(version: str) -> str:
    """`2.11.0+cu130` -> `2.11`; `13.0` -> `13.0`; an empty or unparsable version -> ``."""
    match = _VERSION.match(version or "")
    return f"{match[1]}.{match[2]}" if match else ""


def pow2_bucket(value: int) -> int:
    """The smallest power of two >= value (1 for 0 and 1)."""
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def bucket_value(value: int, rule: str) -> int:
    if rule == "exact":
        return value
    if rule == "pow2":
        return pow2_bucket(value)
    raise ValueError(f"unknown shape bucket rule '{rule}': use one of {RULES}")


def validate_rules(rules: Mapping[str, str], label: str) -> None:
    bad = {k: v for k, v in rules.items() if v not in RULES}
    if bad:
        name, rule = next(iter(bad.items()))
        raise ValueError(f"{label}: forge_shape_buckets['{name}'] = '{rule}' is not one of {RULES}")


def bucket_of(
    constants: Mapping[str, int], rules: Mapping[str, str], names: Iterable[str] | None = None
) -> dict[str, int]:
    """The bucket of one shape: every named constant (default: all of `constants`) mapped by its
    rule, `exact` when the problem declares none."""
    keys = list(names) if names is not None else sorted(constants)
    return {k: bucket_value(int(constants[k]), rules.get(k, "exact")) for k in keys}


def bucket_text(bucket: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(bucket.items())) or "(no dimensions)"


@dataclass(frozen=True)
class Machine:
    """Where kernels would run: the arch (`sm_90`, or `cpu` for the interpreter) and the
    major.minor versions of torch, triton and CUDA (empty when absent)."""

    device: str
    arch: str
    torch: str
    triton: str
    cuda: str

    def describe(self) -> str:
        parts = [self.arch, f"torch {self.torch}"]
        if self.triton:
            parts.append(f"triton {self.triton}")
        if self.cuda:
            parts.append(f"CUDA {self.cuda}")
        return ", ".join(parts)


def describe_key(arch: str, torch: str, triton: str, cuda: str) -> str:
    return Machine("", arch, torch, triton, cuda).describe()


def incompatibility(
    machine: Machine, *, arch: str, torch: str, triton: str, cuda: str, backend: str
) -> str | None:
    """Why an entry verified on (arch, versions) must not run on `machine`; None when it may.
    Triton's version matters for Triton kernels only; CUDA's only on a GPU."""
    differences = []
    if arch != machine.arch:
        differences.append(f"arch {arch} (here {machine.arch})")
    if torch != machine.torch:
        differences.append(f"torch {torch} (here {machine.torch})")
    if backend == "triton" and triton != machine.triton:
        differences.append(f"triton {triton or 'none'} (here {machine.triton or 'none'})")
    if machine.device == "cuda" and cuda != machine.cuda:
        differences.append(f"CUDA {cuda or 'none'} (here {machine.cuda or 'none'})")
    if not differences:
        return None
    return (
        "verified with " + ", ".join(differences) + ": run `forge library verify` on this machine"
    )
