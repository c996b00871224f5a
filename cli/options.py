"""Options several commands share, defined once (`forge eval`, `forge optimize`, `forge batch`).

from forge.cli.options import PrecisionOption, check_precision

def command(..., precision: PrecisionOption = None):
    precision = check_precision(precision)             # a bad name: one error line
    ...problem = resolve_problem(...)
    check_precision(precision, problem)                # the problem must accept it
"""

from __future__ import annotations

from typing import Annotated

import typer

from forge.cli.errors import fail
from forge.evaluator.precision import POLICIES, STRICT, PrecisionError, check_name, resolve

PRECISION_HELP = (
    "precision policy: "
    + "; ".join(f"{name}: {policy.summary}" for name, policy in POLICIES.items())
    + f" [default: {STRICT}; the problem must accept the policy (forge_precisions)]"
)

PrecisionOption = Annotated[
    str | None, typer.Option("--precision", metavar="|".join(POLICIES), help=PRECISION_HELP)
]


def check_precision(name: str | None, problem=None) -> str | None:  # noqa: ANN001 (Problem)
    """`name` as given (None: the default, strict), or one error line and exit status 2 when no
    policy has that name or `problem` does not accept it."""
    try:
        if name is not None:
            check_name(name)
        if problem is not None:
            resolve(name, problem.name, problem.precisions)
    except PrecisionError as exc:
        fail(str(exc))
    return name
