"""Options that several commands share, defined once (`forge eval`, `forge optimize`, `forge
batch`), and the run settings built from them."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from forge.cli.errors import fail
from forge.evaluator.precision import POLICIES, STRICT, PrecisionError, check_name, resolve


class Backend(str, Enum):
    triton = "triton"
    cuda = "cuda"


class Device(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


BackendOpt = Annotated[
    Backend | None, typer.Option(help="kernel backend the Coder writes [default: triton]")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="LLM for Coder and Judge (litellm string, or scripted:FILE); default $FORGE_MODEL"
    ),
]
CoderModelOpt = Annotated[str | None, typer.Option(help="LLM for the Coder (overrides --model)")]
JudgeModelOpt = Annotated[str | None, typer.Option(help="LLM for the Judge (overrides --model)")]
ApiBaseOpt = Annotated[str | None, typer.Option(help="base URL of an OpenAI-compatible server")]
RoundsOpt = Annotated[
    int | None, typer.Option(min=1, help="rounds per trajectory, round 0 included [default: 8]")
]
WidthOpt = Annotated[
    int | None, typer.Option(min=1, help="independent trajectories run at once [default: 1]")
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0, help="sampling temperature, where the model takes one [default: the provider's]"
    ),
]
TopPOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="nucleus sampling, where the model takes it [default: the provider's]",
    ),
]
ReasoningEffortOpt = Annotated[
    str | None,
    typer.Option(help="a reasoning model's effort (low, medium, high ...) [default: the model's]"),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="bound on generated tokens per call, thinking included [default: 8192]"
    ),
]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        min=0, help="stop a trajectory after N rounds without a new best, 0: never [default: 4]"
    ),
]
DeviceOpt = Annotated[
    Device | None,
    typer.Option(
        help="cuda verifies, times and profiles; cpu verifies Triton in the interpreter [default: cuda]"
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        help="where evaluations run: local (a worker per GPU; local:N, local:gpus=0,2), "
        "queue:DIR for `forge worker --queue DIR` on a GPU host sharing DIR, or "
        "ray:HOST:PORT (ray:auto) for an existing Ray cluster [default: local]"
    ),
]
SearchOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--search",
        help="a search setting NAME=VALUE, repeatable: autotune_configs (a candidate's CONFIGS "
        "each evaluated, the best kept; true/false) [true], candidates_per_round (answers per "
        "round, the best kept) [1], judge_turns (Judge prompts per conversation) [4], max_configs (most "
        "CONFIGS per candidate) [8], memory_examples "
        "(recalled kernels as examples, 0: the fixed one) [1], sol_stop (stop a trajectory at "
        "this fraction of the speed of light, none: never) [0.95], technique_hints (true/false) "
        "[true]",
    ),
]
QueueWaitOpt = Annotated[
    float | None,
    typer.Option(
        "--queue-wait",
        min=1.0,
        help="queue:DIR and ray: seconds to wait for a worker to take a job before the "
        "evaluation fails [default: 900]",
    ),
]
GpuOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu",
        help="the GPU of a queue:DIR or ray: executor's workers (e.g. H200), named in the "
        "prompts as the target [default: none named; a local run detects its own]",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL (default $FORGE_DB_URL, else $FORGE_HOME/forge.db)"),
]
GPU_TIME = (
    "GPU time is the evaluations' recorded wall time (static check, sandbox start, compile, "
    "correctness, timing, profiling), not time spent waiting in a queue"
)

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
