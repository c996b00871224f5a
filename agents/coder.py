"""The Coder: turns the search's state into a prompt, and its answer into candidate source."""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, Field

from forge import prompts
from forge.agents import techniques
from forge.agents.errors import FormatError, NoCodeBlock
from forge.agents.interfaces import JudgePlan, Message
from forge.evaluator.precision import prompt_facts
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult
from forge.evaluator.static.rules import device_limits, library_rule, prompt_imports

FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


class GpuSpec(BaseModel):
    """What the prompts say about the target GPU; throughputs are measured ones, or absent."""

    name: str
    sm_count: int
    l2_mb: float
    bandwidth_tbs: float | None = Field(None, description="device copy bandwidth, TB/s")
    fp32_tflops: float | None = None
    bf16_tflops: float | None = None
    source: str = "measured on the device machine (docs/benchmarks.md)"
    arch: str = ""
    """Compute capability as `sm_90` ("" when not known)."""


def detect_gpu() -> GpuSpec:
    """The first visible CUDA GPU, with the measured ceilings Forge knows for it (raises
    EvaluatorError when there is none)."""
    import torch

    from forge.evaluator import EvaluatorError
    from forge.evaluator.gpus import GpuProperties

    if not torch.cuda.is_available():
        raise EvaluatorError(
            "--device cuda needs a CUDA GPU and none is visible here: use --device cpu"
        )
    props = torch.cuda.get_device_properties(0)
    return _with_ceilings(
        GpuProperties(
            name=props.name,
            arch=f"sm_{props.major}{props.minor}",
            sm_count=props.multi_processor_count,
            l2_mb=round(props.L2_cache_size / 2**20, 1),
        )
    )


def named_gpu(name: str) -> GpuSpec:
    """The known GPU `name` names (`--gpu H200`), with its measured ceilings; raises
    ExecutorSpecError for a GPU Forge has no properties of."""
    from forge.evaluator.executors import ExecutorSpecError
    from forge.evaluator.gpus import KNOWN, properties_for

    props = properties_for(name)
    if props is None:
        known = ", ".join(g.name for g in KNOWN)
        raise ExecutorSpecError(f"--gpu {name}: no GPU of that name is known (known: {known})")
    return _with_ceilings(props)


def _with_ceilings(props) -> GpuSpec:  # noqa: ANN001 (GpuProperties)
    """`props` with the measured ceilings Forge knows for that GPU (none when unmeasured)."""
    from forge.evaluator.gpus import ceilings_for

    ceilings = ceilings_for(props.name)
    return GpuSpec(
        name=props.name,
        arch=props.arch,
        sm_count=props.sm_count,
        l2_mb=props.l2_mb,
        bandwidth_tbs=ceilings.bandwidth_bytes_s / 1e12 if ceilings else None,
        fp32_tflops=ceilings.fp32_flops_s / 1e12 if ceilings else None,
        bf16_tflops=ceilings.half_flops_s / 1e12 if ceilings else None,
    )


def target_gpu(evaluation) -> GpuSpec | None:  # noqa: ANN001 (EvalConfig)
    """The GPU the prompts name: detected when evaluations run on this machine's GPU, the
    `target_gpu` named for a queue's or Ray's workers, else none."""
    from forge.evaluator.executors import on_this_machine

    if evaluation.device != "cuda":
        return None
    if on_this_machine(evaluation.executor):
        return detect_gpu()
    return named_gpu(evaluation.target_gpu) if evaluation.target_gpu else None


class Attempt(BaseModel):
    """One line of the compact history the agents see."""

    round: int
    kind: str
    plan: str = ""
    status: str
    speedup: float | None = None
    device_ms: float | None = None
    """Device time per call at the target sets (geometric mean), when trusted timings exist."""
    note: str = ""
    candidate_id: int | None = None
    is_best: bool = False
    kept: bool = False
    """The candidate the search went on from (among a round's several, the best)."""


class PromptInputSet(BaseModel):
    """An input set as the prompts list it: every set of the problem, on any device."""

    name: str
    constants: dict[str, int]
    target: bool
    """Its speedup is the one that counts (`forge_target_sets`, else the largest set)."""
    checked: bool
    """This run's device evaluates it (on cpu only the sets marked cpu; on the GPU all)."""


def prompt_input_sets(problem: Problem, device: str) -> list[PromptInputSet]:
    """The problem's input sets with what the prompts say about each. Without declared target
    sets the evaluator times the largest set by its inputs' size; here the set whose size
    constants multiply to the most stands for it (the inputs are not built to know)."""
    checked = {s.name for s in problem.sets_for(device)}
    targets = set(problem.target_sets) or {
        max(problem.input_sets, key=lambda s: math.prod(s.constants.values())).name
    }
    return [
        PromptInputSet(
            name=s.name, constants=s.constants, target=s.name in targets, checked=s.name in checked
        )
        for s in problem.input_sets
    ]


class PromptContext(BaseModel):
    """What every prompt of one trajectory shares."""

    problem: Problem
    backend: str
    device: str
    gpu: GpuSpec | None = None
    precision: str = "strict"
    """The run's precision policy (forge.evaluator.precision)."""
    sol_stop: float | None = None
    """The fraction of the speed of light at which the loop stops a trajectory (None: never)."""
    max_configs: int | None = None
    """Most configs a candidate's `CONFIGS` may list for the evaluator to try (None: the run
    does not try configs, and the prompts do not mention them)."""

    def variables(self) -> dict:
        p = self.problem
        return {
            "problem": self.problem,
            "input_sets": prompt_input_sets(p, self.device),
            "backend": self.backend,
            "device": self.device,
            "gpu": self.gpu,
            # the rules the prompt states, from the tables the static checks enforce
            "allowed_imports": prompt_imports(self.backend),
            "library": library_rule(),
            "unavailable": device_limits(self.device),
            "precision": prompt_facts(self.precision, p.dtype, p.atol, p.rtol),
            "sol_stop": self.sol_stop,
            "max_configs": self.max_configs,
        }


def extract_code(text: str) -> str:
    """The last fenced block that defines ModelNew (the Coder may quote code before answering)."""
    blocks = [body for lang, body in FENCE.findall(text) if lang.lower() in ("", "python", "py")]
    defining = [b for b in blocks if "class ModelNew" in b]
    if not defining:
        what = "no ```python code block" if not blocks else "no code block defines `class ModelNew`"
        raise NoCodeBlock(what, text)
    return defining[-1].strip() + "\n"


class Coder:
    def __init__(self, context: PromptContext):
        self.context = context

    def _messages(self, template: str, **ctx: object) -> list[Message]:
        variables = self.context.variables()
        return [
            Message(role="system", content=prompts.render("coder_system", **variables)),
            Message(role="user", content=prompts.render(template, **variables, **ctx)),
        ]

    def initial(self, examples: list[prompts.Example]) -> list[Message]:
        """The first prompt, with `examples` (`forge.agents.memory.examples_for`)."""
        return self._messages("coder_initial", examples=examples)

    def repair(
        self,
        code: str,
        result: EvalResult,
        plan: JudgePlan | None,
        history: list[Attempt],
        code_round: int,
    ) -> list[Message]:
        return self._messages(
            "coder_repair",
            code=code,
            result=result,
            plan=plan,
            technique=techniques.find(plan.technique) if plan and plan.technique else None,
            history=history,
            code_round=code_round,
        )

    def optimize(
        self,
        code: str,
        result: EvalResult,
        plan: JudgePlan | None,
        history: list[Attempt],
        code_round: int,
    ) -> list[Message]:
        return self._messages(
            "coder_optimize",
            code=code,
            result=result,
            plan=plan,
            technique=techniques.find(plan.technique) if plan and plan.technique else None,
            history=history,
            code_round=code_round,
        )

    def reminder(self, error: FormatError) -> Message:
        return Message(
            role="user", content=prompts.render("format_reminder_code", reason=error.reason)
        )

    parse = staticmethod(extract_code)
