"""Every prompt template renders with realistic data; StrictUndefined catches a missing variable;
the parsers of the agents' answers accept what they should and refuse the rest; the few-shot
examples pass the evaluator."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jinja2
import pytest

from forge import prompts
from forge.agents import techniques
from forge.agents.coder import Attempt, Coder, GpuSpec, PromptContext, extract_code
from forge.agents.configs import ConfigTrial
from forge.agents.errors import InvalidPlan, NoCodeBlock
from forge.agents.interfaces import JudgePlan
from forge.agents.judge import Conversation, Judge, parse_plan, plan_fields, plan_format
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    KernelProfile,
    Profile,
    SetTiming,
    Status,
    TimingStats,
)
from forge.evaluator.static import check_source, rules
from forge.prompts.tracebacks import candidate_frames

H200 = GpuSpec(
    name="NVIDIA H200",
    sm_count=132,
    l2_mb=60.0,
    bandwidth_tbs=4.25,
    fp32_tflops=51.0,
    bf16_tflops=679.0,
    source="measured 2026-11-21",
)
SOFTMAX = resolve_problem("softmax")
CANDIDATE = (Path(prompts.EXAMPLES_DIR) / "triton_softmax.py").read_text()


def _stats(ms: float) -> TimingStats:
    return TimingStats(
        n=50,
        median_ms=ms,
        p20_ms=ms * 0.98,
        p80_ms=ms * 1.03,
        mean_ms=ms,
        cv=0.02,
        host_median_ms=ms * 1.01,
    )


COMPILE_ERROR = EvalResult(
    status=Status.compile_error,
    reasons=["triton compilation failed: incompatible shapes in tl.dot"],
    problem="softmax",
    backend="triton",
    environment=Environment(device="cuda", gpu_name="NVIDIA H200", arch="sm_90"),
    compile_log="triton.compiler.errors.CompilationError: at 12:8:\n    y = tl.dot(a, b)\n        ^\nValueError: incompatible dimensions",
)
INCORRECT = EvalResult(
    status=Status.incorrect,
    reasons=["output mismatch on input set 'odd' seed #0 (before_reference)"],
    problem="softmax",
    backend="triton",
    environment=Environment(device="cuda", gpu_name="NVIDIA H200", arch="sm_90"),
    checks=[
        Check(
            input_set="tiny",
            seed_index=0,
            phase="before_reference",
            passed=True,
            max_abs_error=1e-7,
            max_rel_error=1e-6,
            mismatches=0,
            numel=889,
        ),
        Check(
            input_set="odd",
            seed_index=0,
            phase="before_reference",
            passed=False,
            max_abs_error=float("nan"),
            max_rel_error=float("inf"),
            mismatches=33 * 489,
            numel=33000,
            first_bad_index=[0, 511],
            note="NaN in output",
        ),
        Check(
            input_set="odd",
            seed_index=1,
            phase="after_reference",
            passed=False,
            max_abs_error=0.25,
            max_rel_error=3.5,
            mismatches=120,
            numel=33000,
            first_bad_index=[2, 600],
        ),
    ],
    stderr="UserWarning: something the candidate printed",
)
CORRECT = EvalResult(
    status=Status.correct,
    problem="softmax",
    backend="triton",
    environment=Environment(
        device="cuda",
        gpu_name="NVIDIA H200",
        arch="sm_90",
        torch_version="2.11.0",
        triton_version="3.6.0",
    ),
    checks=[
        Check(
            input_set="large",
            seed_index=i,
            phase="before_reference",
            passed=True,
            max_abs_error=3e-8,
            max_rel_error=2e-6,
            mismatches=0,
            numel=4096 * 8192,
        )
        for i in range(3)
    ],
    timings=[
        SetTiming(
            input_set="wide",
            candidate=_stats(0.041),
            eager=_stats(0.052),
            compiled=_stats(0.038),
            speedup_vs_eager=1.27,
            speedup_vs_compile=0.93,
            floor_ms=0.008,
            roofline_fraction=0.195,
            rechecks=5,
        ),
        SetTiming(
            input_set="large",
            candidate=_stats(0.071),
            eager=_stats(0.102),
            compiled=None,
            speedup_vs_eager=1.44,
            speedup_vs_compile=None,
            floor_ms=0.063,
            roofline_fraction=0.887,
            rechecks=5,
        ),
    ],
    timing_meaningful=True,
    speedup_vs_eager=1.35,
    speedup_vs_compile=0.93,
    profile=Profile(
        tool="ncu",
        input_set="large",
        kernels=[
            KernelProfile(
                name="_softmax_row_kernel",
                duration_us=70.2,
                registers_per_thread=40,
                spills=0,
                shared_mem_bytes=0,
                metrics={
                    "dram__throughput.avg.pct_of_peak_sustained_elapsed": 88.1,
                    "sm__warps_active.avg.pct_of_peak_sustained_active": 41.0,
                },
            )
        ],
    ),
)
PLAN = JudgePlan(
    diagnosis="Rows of 32769 columns spill: BLOCK=65536 keeps the whole row in registers.",
    bottleneck="memory",
    plan="Loop over the row in blocks of 4096 with an online max/sum.",
    expected_gain="wide set from 0.041 ms to ~0.012 ms",
    technique="single-pass",
)
HISTORY = [
    Attempt(round=0, kind="initial", status="compile_error", note="incompatible dimensions"),
    Attempt(
        round=1,
        kind="repair",
        plan="Use tl.sum instead of tl.dot",
        status="correct",
        speedup=1.35,
        is_best=True,
    ),
]
ROUND = [
    Attempt(
        round=2, kind="optimize", status="correct", speedup=1.1, device_ms=0.09, candidate_id=7
    ),
    Attempt(round=2, kind="optimize", status="no usable code"),
    Attempt(
        round=2,
        kind="optimize",
        status="correct",
        speedup=1.35,
        device_ms=0.071,
        candidate_id=9,
        kept=True,
    ),
    Attempt(round=2, kind="optimize", status="incorrect", note="mismatch on 'odd'", candidate_id=8),
]
CONFIG_TRIALS = [
    ConfigTrial(
        index=1,
        config={"BLOCK": 1024, "num_warps": 4},
        candidate_id=11,
        status="correct",
        device_ms=0.09,
    ),
    ConfigTrial(
        index=2,
        config={"BLOCK": 64, "num_warps": 2},
        candidate_id=12,
        status="incorrect",
        note="output mismatch on input set 'odd'",
    ),
    ConfigTrial(
        index=3,
        config={"BLOCK": 2048, "num_warps": 8},
        candidate_id=13,
        status="correct",
        device_ms=0.071,
        kept=True,
    ),
]

CASES = {
    "coder_system": {},
    "coder_initial": {"examples": [prompts.example_for("triton", "softmax")]},
    "coder_repair": {
        "code": CANDIDATE,
        "result": INCORRECT,
        "plan": PLAN,
        "technique": None,
        "history": HISTORY,
        "code_round": 3,
    },
    "coder_optimize": {
        "code": CANDIDATE,
        "result": CORRECT,
        "plan": PLAN,
        "technique": techniques.find(PLAN.technique),
        "history": HISTORY,
        "code_round": 3,
    },
    "judge_system": {**plan_format(), "techniques": techniques.applicable("sm_90")},
    "judge_repair": {
        "code": CANDIDATE,
        "result": COMPILE_ERROR,
        "history": HISTORY,
        "code_round": 1,
        "opening": True,
        "diff": "",
        "round_attempts": [],
        "configs": [],
    },
    "judge_optimize": {
        "code": CANDIDATE,
        "result": CORRECT,
        "history": HISTORY,
        "code_round": 2,
        "opening": False,
        "diff": "--- round 1\n+++ round 2\n@@ -1 +1 @@\n-BLOCK = 1024\n+BLOCK = 2048",
        "round_attempts": ROUND,
        "configs": CONFIG_TRIALS,
    },
    "format_reminder_code": {"reason": "no ```python code block"},
    "format_reminder_json": {
        "reason": "invalid JSON (Expecting ',' delimiter at line 1 column 9)",
        "plan_fields": plan_fields(),
    },
}


def _shared(backend: str = "triton", gpu: GpuSpec | None = H200) -> dict:
    return PromptContext(
        problem=SOFTMAX, backend=backend, device="cuda", gpu=gpu, max_configs=8
    ).variables()


def _shared_on(device: str) -> dict:
    return PromptContext(problem=SOFTMAX, backend="triton", device=device).variables()


def test_cases_cover_every_template():
    assert sorted(CASES) == prompts.template_names()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_every_template_renders(name, backend):
    text = prompts.render(name, **_shared(backend), **CASES[name])
    assert text.strip()
    assert "Undefined" not in text and "{{" not in text and "{%" not in text


def test_missing_variable_fails():
    ctx = {**_shared(), **CASES["coder_repair"]}
    del ctx["result"]
    with pytest.raises(jinja2.UndefinedError):
        prompts.render("coder_repair", **ctx)
    with pytest.raises(jinja2.UndefinedError):
        prompts.render("_gpu.j2", gpu={"name": "H200"}, device="cuda")


def test_gpu_block_carries_the_callers_numbers():
    text = prompts.render("coder_initial", **_shared(), **CASES["coder_initial"])
    assert "NVIDIA H200: 132 SMs, 60.0 MB L2" in text
    assert "4.25 TB/s" in text and "51.0 TFLOP/s" in text and "679.0 TFLOP/s" in text
    unknown = prompts.render("coder_initial", **_shared(gpu=None), **CASES["coder_initial"])
    assert "Not known for this run" in unknown


def test_backend_guidance_and_rules():
    triton = prompts.render("coder_system", **_shared("triton"))
    cuda = prompts.render("coder_system", **_shared("cuda"))
    assert "@triton.jit" in triton and "cupy.RawModule" not in triton
    assert "cupy.RawModule" in cuda and "load_inline" in cuda
    for text in (triton, cuda):
        assert "Never mention `Model`" in text and "`try`/`except`" in text and "stream" in text
        assert (
            "rtol=0.0001, and for each comparison atol = 4 x the largest difference between "
            "the PyTorch reference and a float64 run of it" in _one_line(text)
        )
        assert "(never below 0.0001;" in _one_line(text)
        # what the trusted side and the runner do when they build the two models
        assert "run in eval mode (`.eval()`), so BatchNorm layers use their running" in text
    assert "torch.utils.cpp_extension" in cuda and "torch.utils.cpp_extension" not in triton


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_rules_render_the_enforced_tables(backend):
    """The import list and the vendor-library rule the Coder reads come from the tables the
    static checks enforce (forge.evaluator.static.rules), not from a copy that can drift."""
    text = _one_line(prompts.render("coder_system", **_shared(backend)))
    imports = re.search(r"Import only (.+?)\. ", text)
    assert imports and imports.group(1).split(", ") == rules.prompt_imports(backend)
    calls = re.search(r"\(cuBLAS/cuDNN\) in `forward`: (.+?), the `@` operator", text)
    assert calls and set(calls.group(1).split(", ")) == rules.LIBRARY_CALLS
    layers = re.search(r"held by the model that is one of (.+?)\. Your own kernels", text)
    assert layers and set(layers.group(1).split(", ")) == rules.LIBRARY_MODULES
    assert "an output computed by library calls alone" in text


def test_prompt_imports_cover_exactly_what_is_enforced():
    listed = {m for b in rules.BACKENDS for m in rules.prompt_imports(b)}
    assert {m for m in listed if not m.endswith("*")} == rules.ALLOWED_IMPORTS
    assert {m[:-1] for m in listed if m.endswith("*")} == set(rules.ALLOWED_IMPORT_PREFIXES)
    for backend in rules.BACKENDS:  # every listed import passes the static check
        source = "".join(
            f"import {m}\n"
            for m in rules.prompt_imports(backend)
            if m != "__future__" and "*" not in m
        )
        assert not any("forbidden import" in v for v in check_source(source).violations)


def test_evidence_reaches_the_judge():
    repair = prompts.render(
        "judge_repair", **_shared(), **{**CASES["judge_repair"], "result": INCORRECT}
    )
    assert "input set `odd`, seed #0" in repair and "first bad index [0, 511]" in repair
    assert "max abs error inf" in repair and "NaN in output" in repair
    assert "Input sets with at least one passing comparison: tiny" in repair
    compile_ = prompts.render("judge_repair", **_shared(), **CASES["judge_repair"])
    assert "incompatible dimensions" in compile_ and "compile_error" in compile_
    optimize = prompts.render("judge_optimize", **_shared(), **CASES["judge_optimize"])
    row = "| wide | 0.0410 (cv 0.02) | 0.0414 | 0.0520 | 0.0380 | 1.27x | 0.93x | 0.0080 | 20% |"
    assert row in optimize, optimize  # device times, the launch overhead in its own column
    assert "no host launch overhead" in optimize
    assert "dram__throughput.avg.pct_of_peak_sustained_elapsed: 88.1" in optimize
    assert "40 registers/thread" in optimize and "round 1 (repair: Use tl.sum" in optimize


@pytest.mark.parametrize("max_configs", [8, 3, None])
def test_configs_protocol_is_stated_from_the_setting(max_configs):
    """The Coder and the Judge read the configs protocol with the limit the loop enforces; with
    the feature off (None) neither mentions it."""
    context = PromptContext(
        problem=SOFTMAX, backend="triton", device="cuda", gpu=H200, max_configs=max_configs
    )
    coder = _one_line(Coder(context).initial([])[0].content)
    judge = _one_line(Judge(context).optimize(CANDIDATE, CORRECT, HISTORY, 2)[0].content)
    if max_configs is None:
        assert "CONFIGS" not in coder and "CONFIGS" not in judge
        return
    assert f"declare up to {max_configs} of them" in coder and "keeps the fastest correct" in coder
    assert f"literal list (at most {max_configs})" in coder
    assert f"up to {max_configs} configurations (`CONFIGS`" in judge
    cpu = Coder(context.model_copy(update={"device": "cpu"})).initial([])[0].content
    assert "where nothing is timed: the first correct one" in _one_line(cpu)


def test_judge_sees_the_config_table():
    turn = prompts.render("judge_optimize", **_shared(), **CASES["judge_optimize"])
    assert "## Its 3 configurations (`CONFIGS`), each evaluated as a candidate" in turn
    assert (
        '- config 2 `{"BLOCK": 64, "num_warps": 2}` (candidate 12): incorrect; output mismatch'
        in turn
    )
    assert (
        '- config 3 `{"BLOCK": 2048, "num_warps": 8}` (candidate 13): correct, 0.0710 ms at the '
        "target set(s) [kept: pinned as `CONFIG` above]" in turn
    )
    assert "The candidate is its fastest config at the target set(s)." in turn
    untimed = [c.model_copy(update={"device_ms": None}) for c in CONFIG_TRIALS]
    cpu = prompts.render(
        "judge_optimize", **_shared(), **{**CASES["judge_optimize"], "configs": untimed}
    )
    assert "first config that passed (without timings the configs cannot be ranked)" in cpu
    plain = prompts.render("judge_repair", **_shared(), **CASES["judge_repair"])
    assert "configurations (`CONFIGS`)" not in plain


def test_coder_and_judge_messages():
    context = PromptContext(problem=SOFTMAX, backend="triton", device="cpu")
    first = Coder(context).initial([prompts.example_for("triton", "softmax")])
    assert [m.role for m in first] == ["system", "user"]
    assert "class Model(nn.Module)" in first[1].content
    assert "Example: gelu, triton" in first[1].content  # an example for another operator
    assert "From the fixed example prompts/examples/triton_gelu.py." in first[1].content
    assert "tiny`: batch_size=7, dim=127 (checked on cpu in this run)" in first[1].content
    plan_prompt = Judge(context).optimize(CANDIDATE, CORRECT, HISTORY, 2)
    assert '"diagnosis" (required)' in plan_prompt[0].content


CPU_CORRECT = CORRECT.model_copy(
    update={
        "timings": [],
        "timing_meaningful": False,
        "speedup_vs_eager": None,
        "speedup_vs_compile": None,
        "profile": None,
        "environment": Environment(device="cpu"),
    }
)


def test_the_prompts_state_what_the_device_cannot_run():
    """On cpu the prompts name what the static check rejects there, from the same table; on
    the GPU autotuning is offered."""
    cpu = prompts.render("coder_system", **_shared_on("cpu"))
    gpu = prompts.render("coder_system", **_shared_on("cuda"))
    for name, why in rules.DEVICE_UNAVAILABLE["cpu"].items():
        assert f"`{name}`: {why}." in cpu and name not in gpu.replace("@triton.autotune", "")
    assert "`@triton.autotune` cannot run on cpu" in cpu
    assert "`@triton.autotune`\n  over a few configs keyed on the size arguments is allowed" in gpu


def test_a_problem_file_shows_its_gpu_sets_on_cpu(tmp_path):
    """A KernelBench-style file's derived sets: the CPU-sized one is checked, the GPU ones are
    listed as the shapes the kernel is for, the largest marked as the target."""
    from forge.evaluator.problem import load_problem

    source = (Path(__file__).parent / "fixtures" / "batch" / "scale.py").read_text()
    problem = load_problem(source, "scale")
    context = PromptContext(problem=problem, backend="triton", device="cpu")
    text = Coder(context).initial([])[1].content
    lines = {
        s.name: next(line for line in text.splitlines() if f"`{s.name}`:" in line)
        for s in problem.input_sets
    }
    assert lines["small"].endswith("(checked on cpu in this run)")
    assert lines["base"].endswith("(GPU only)") and lines["odd"].endswith("(target) (GPU only)")


def test_the_prompt_lists_only_the_sets_the_model_runs():
    """A derived set the problem's Model rejects (`odd`: 33 columns do not split into chunks of
    17) is neither listed nor the target; the largest set kept is the target."""
    fixture = Path(__file__).parent / "fixtures" / "derived" / "chunk_softmax.py"
    problem = resolve_problem(str(fixture))
    context = PromptContext(problem=problem, backend="triton", device="cuda")
    text = Coder(context).initial([])[1].content
    assert "`odd`" not in text
    assert "- `base`: batch_size=16, dim=32, chunk=16 (target)\n" in text
    assert "- `small`: batch_size=17, dim=17, chunk=17\n" in text


def test_the_judge_on_cpu_is_not_told_to_read_timings():
    context = PromptContext(problem=SOFTMAX, backend="triton", device="cpu")
    cpu = Judge(context).optimize(CANDIDATE, CPU_CORRECT, HISTORY, 2)[-1].content
    gpu = Judge(context).optimize(CANDIDATE, CORRECT, HISTORY, 2)[-1].content
    assert "using the roofline fraction, the baselines and the profile" in gpu
    assert "roofline fraction, the baselines" not in cpu and "nothing was\ntimed" in cpu


def test_the_answer_format_is_a_field_list_with_an_example():
    system = (
        Judge(PromptContext(problem=SOFTMAX, backend="triton", device="cuda"))
        .optimize(CANDIDATE, CORRECT, HISTORY, 2)[0]
        .content
    )
    assert '"title"' not in system and '"type"' not in system
    for name, info in JudgePlan.model_fields.items():
        assert (
            f'- "{name}"{" (required)" if info.is_required() else ""}: {info.description}' in system
        )
    example = system.split("For example:\n")[1]
    assert parse_plan(example).bottleneck == "memory"
    reminder = Judge(PromptContext(problem=SOFTMAX, backend="triton", device="cuda")).reminder(
        InvalidPlan("no JSON object in the answer", "")
    )
    assert all(f'"{name}"' in reminder.content for name in JudgePlan.model_fields)


def test_failure_evidence_keeps_the_candidates_frames(tmp_path):
    """A real traceback through a harness and torch keeps the candidate's frames and the error."""
    import runpy
    import traceback

    candidate = tmp_path / "forge_candidate.py"
    candidate.write_text(
        "import torch\nimport torch.nn.functional as F\n\n\ndef forward(x):\n"
        "    return F.interpolate(x, scale_factor=2.0, mode='bicubic')\n"
    )

    def harness():
        module = runpy.run_path(str(candidate))
        return module["forward"](torch.randn(2, 3))

    import torch

    try:
        harness()
    except (NotImplementedError, ValueError, RuntimeError):
        text = traceback.format_exc()
    assert "torch/nn/functional.py" in text and "in harness" in text  # a real, mixed traceback
    kept = candidate_frames(text)
    assert "torch/nn/functional.py" not in kept and "in harness" not in kept
    assert 'forge_candidate.py", line 6, in forward' in kept
    assert "F.interpolate(x, scale_factor=2.0, mode='bicubic')" in kept
    assert kept.splitlines()[-2] == text.strip().splitlines()[-1]  # the error itself
    assert re.search(r"\[\d+ frames of the evaluator, torch or Triton left out\]$", kept)
    evidence = prompts.render("_evidence.j2", result=INCORRECT.model_copy(update={"stderr": text}))
    assert "in harness" not in evidence and "line 6, in forward" in evidence


def test_an_error_inside_a_kernel_names_its_line():
    """The runner follows the exception chain: Triton's interpreter wraps the kernel body's
    error, and the evidence shows the kernel's line (a real evaluation on the CPU)."""
    from forge.evaluator import EvalConfig, evaluate

    source = CANDIDATE.replace(
        "x = x - tl.max(x, axis=0)", "x = x - tl.max(x, axis=0) + undefined_name"
    )
    result = evaluate(SOFTMAX, source, EvalConfig(device="cpu"))
    assert result.status is Status.runtime_error
    line = next(n for n, text in enumerate(source.splitlines(), 1) if "undefined_name" in text)
    assert f'forge_candidate.py", line {line}, in _softmax_row_kernel' in result.stderr
    assert "NameError: name 'undefined_name' is not defined" in result.stderr
    assert "The above exception was the direct cause" in result.stderr


def test_repair_prompts_name_the_target_gpu():
    context = PromptContext(problem=SOFTMAX, backend="triton", device="cuda", gpu=H200)
    coder = Coder(context).repair(CANDIDATE, INCORRECT, PLAN, HISTORY, 3)[-1].content
    judge = Judge(context).repair(CANDIDATE, INCORRECT, HISTORY, 3)[-1].content
    assert "NVIDIA H200: 132 SMs" in coder and "NVIDIA H200: 132 SMs" in judge


def test_the_judge_hears_the_rules_once_per_conversation():
    """Later turns of a trajectory's Judge conversation refer to the rules, operator and GPU
    stated in the first, show a small change as a diff, and a fresh conversation starts after
    `max_turns` turns."""
    judge = Judge(PromptContext(problem=SOFTMAX, backend="triton", device="cuda", gpu=H200))
    talk = Conversation(max_turns=3)
    code = CANDIDATE
    for turn in range(3):
        messages = judge.optimize(code, CORRECT, HISTORY, turn + 1, talk)
        text = "\n".join(m.content for m in messages)
        assert text.count("## Rules the evaluator enforces") == 1
        assert text.count("NVIDIA H200: 132 SMs") == 1 and text.count("## Answer format") == 1
        assert len(messages) == 2 + 2 * turn
        if turn:
            assert "as stated above" in messages[-1].content
            assert (
                "```diff" in messages[-1].content
                and f"-LOOP_BLOCK = {4096 >> turn}" in messages[-1].content
            )
            assert "class ModelNew" not in messages[-1].content
        talk.record(messages, '{"diagnosis": "d", "plan": "p"}', code, turn + 1)
        code = code.replace(f"LOOP_BLOCK = {2048 >> turn}", f"LOOP_BLOCK = {1024 >> turn}")
    assert talk.messages == [] and len(judge.optimize(code, CORRECT, HISTORY, 4, talk)) == 2


def test_extract_code():
    answer = "Here:\n```python\nx = 1\n```\nand the file:\n```python\nimport torch\nclass ModelNew:\n    pass\n```\n"
    assert extract_code(answer) == "import torch\nclass ModelNew:\n    pass\n"
    with pytest.raises(NoCodeBlock, match="no ```python code block"):
        extract_code("I would use a Triton kernel.")
    with pytest.raises(NoCodeBlock, match="defines"):
        extract_code("```python\nprint(1)\n```")


def test_parse_plan():
    good = {"diagnosis": "d", "bottleneck": "memory", "plan": "p", "expected_gain": "2x"}
    assert parse_plan(json.dumps(good)).plan == "p"
    assert parse_plan(f"Sure.\n```json\n{json.dumps(good)}\n```").bottleneck == "memory"
    assert parse_plan('{"diagnosis": "d", "plan": "p"}').expected_gain == ""
    with pytest.raises(InvalidPlan, match="invalid JSON"):
        parse_plan('{"diagnosis": "d", plan: }')
    with pytest.raises(InvalidPlan, match="no JSON object"):
        parse_plan("the kernel is memory bound")
    with pytest.raises(InvalidPlan, match="fields"):
        parse_plan('{"diagnosis": "d"}')
    with pytest.raises(InvalidPlan, match="must not be empty"):
        parse_plan('{"diagnosis": " ", "plan": ""}')


def test_examples_are_declared():
    found = {(e.problem, e.backend) for e in prompts.examples()}
    assert {("softmax", "triton"), ("gelu", "triton"), ("softmax", "cuda")} <= found
    assert prompts.example_for("triton", "gelu").problem == "softmax"


@pytest.mark.parametrize("example", prompts.examples("triton"), ids=lambda e: Path(e.path).name)
def test_triton_examples_pass_the_evaluator(example):
    from forge.evaluator import EvalConfig, evaluate
    from forge.evaluator.problem import InputSet

    problem = resolve_problem(example.problem)
    if example.problem == "softmax":  # a row wider than SINGLE_PASS_MAX takes the online path
        wide = InputSet(
            name="wide_cpu", constants={**problem.constants, "batch_size": 3, "dim": 8197}, cpu=True
        )
        problem = problem.model_copy(update={"input_sets": [*problem.input_sets, wide]})
    result = evaluate(problem, example.source, EvalConfig(device="cpu"))
    assert result.status is Status.correct, (result.reasons, result.stderr[-2000:])
    assert {c.input_set for c in result.checks} == {s.name for s in problem.sets_for("cpu")}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("example", prompts.examples("cuda"), ids=lambda e: Path(e.path).name)
def test_cuda_examples_compile(example):
    from forge.evaluator import EvalConfig, evaluate

    result = evaluate(resolve_problem(example.problem), example.source, EvalConfig(device="cpu"))
    assert result.status is Status.compiled, (result.reasons, result.compile_log[-2000:])


def test_the_headroom_to_the_speed_of_light_is_shown():
    """The geometric mean of the target sets' roofline fractions, as headroom and as the loop's
    stop; no line when a target set has no roofline floor."""
    targeted = CORRECT.model_copy(
        update={"timings": [t.model_copy(update={"target": True}) for t in CORRECT.timings]}
    )
    assert targeted.roofline_at_targets == pytest.approx((0.195 * 0.887) ** 0.5)
    context = PromptContext(problem=SOFTMAX, backend="triton", device="cuda", sol_stop=0.95)
    text = _one_line(Judge(context).optimize(CANDIDATE, targeted, HISTORY, 2)[-1].content)
    assert (
        "runs at 42% of the speed of light (the roofline floor), so at most 2.40x faster is possible"
        in text
    )
    assert "stops this trajectory once its best reaches 95%" in text
    unfloored = targeted.model_copy(
        update={"timings": [targeted.timings[0].model_copy(update={"roofline_fraction": None})]}
    )
    assert unfloored.roofline_at_targets is None
    assert "Headroom" not in Judge(context).optimize(CANDIDATE, unfloored, HISTORY, 2)[-1].content


def test_the_judge_can_name_a_technique_and_the_coder_gets_its_hint():
    """The catalogue reaches the Judge's system prompt (architecture-specific entries only for
    their GPUs); a plan naming a technique is normalised, an unknown name is refused with the
    list, and the named technique's hint reaches the Coder's prompt for the run's backend."""
    hopper = H200.model_copy(update={"arch": "sm_90"})
    ampere = H200.model_copy(update={"name": "NVIDIA A100", "arch": "sm_80"})

    def system(gpu: GpuSpec | None) -> str:
        context = PromptContext(problem=SOFTMAX, backend="triton", device="cuda", gpu=gpu)
        return Judge(context).optimize(CANDIDATE, CORRECT, HISTORY, 2)[0].content

    for t in techniques.TECHNIQUES:
        assert f"- `{t.name}`: {t.summary}. When: {t.applies_when}." in system(hopper)
    assert "`hopper-tma-wgmma`" not in system(ampere) and "`single-pass`" in system(ampere)
    assert "`hopper-tma-wgmma`" in system(None)  # GPU unknown: the condition says when

    answer = {"diagnosis": "d", "plan": "p", "technique": "Split Reduction"}
    assert parse_plan(json.dumps(answer)).technique == "split-reduction"
    with pytest.raises(InvalidPlan, match="not a listed technique: use one of single-pass, "):
        parse_plan(json.dumps({**answer, "technique": "magic"}))
    assert parse_plan(json.dumps({**answer, "technique": ""})).technique == ""

    for backend in ("triton", "cuda"):
        context = PromptContext(problem=SOFTMAX, backend=backend, device="cuda", gpu=hopper)
        prompt = Coder(context).optimize(CANDIDATE, CORRECT, PLAN, HISTORY, 2)[-1].content
        hint = techniques.find("single-pass").hint[backend]
        assert "Technique `single-pass` (" in prompt
        assert _one_line(hint) in _one_line(prompt)
    plain = PLAN.model_copy(update={"technique": ""})
    prompt = Coder(context).optimize(CANDIDATE, CORRECT, plain, HISTORY, 2)[-1].content
    assert "Technique `" not in prompt


def test_every_technique_has_a_hint_for_every_backend():
    for t in techniques.TECHNIQUES:
        assert set(t.hint) == set(rules.BACKENDS) and techniques.find(t.name) is t
        assert t.name == "-".join(t.name.split()).lower()


def test_without_technique_hints_the_judge_hears_of_none():
    """`technique_hints` off (the loop passes no techniques): no catalogue, no such field."""
    context = PromptContext(problem=SOFTMAX, backend="triton", device="cuda", gpu=H200)
    judge = Judge(context, [])
    system = judge.optimize(CANDIDATE, CORRECT, HISTORY, 2)[0].content
    assert "## Techniques" not in system and '"technique"' not in system
    assert (
        "technique" not in judge.reminder(InvalidPlan("no JSON object in the answer", "")).content
    )
    assert '"technique"' in Judge(context).optimize(CANDIDATE, CORRECT, HISTORY, 2)[0].content
