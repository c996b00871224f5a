"""The optimize loop with the real evaluator and database and a scripted LLM.

Candidates here are PyTorch fallbacks that the evaluator's static checks reject at once, so the
loop's control flow (limits, parallel trajectories, malformed answers, LLM errors, resume) is
tested in milliseconds per round; tests/test_optimize_cli.py runs kernels through the sandbox.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from forge.agents import loop
from forge.agents.errors import ResumeError
from forge.agents.interfaces import JudgePlan
from forge.agents.llm import get_model
from forge.agents.loop_config import parse_search
from forge.db.store import RunStore
from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import Environment, EvalResult, SetTiming, Status, TimingStats

KERNELS = Path(__file__).parent / "fixtures" / "scripts" / "softmax_kernels"
FALLBACK = (KERNELS / "torch_fallback.py").read_text()
TAG = re.compile(r"\[([A-Z]\d+)\]")
PLAN = {
    "diagnosis": "rejected: torch.softmax is PyTorch",
    "bottleneck": "static_check",
    "plan": "write a Triton kernel",
}


def coder(tag: str, cost: float = 0.0) -> dict:
    return {"role": "coder", "text": f"[{tag}]\n```python\n{FALLBACK}```", "cost_usd": cost}


def judge(tag: str, cost: float = 0.0) -> dict:
    return {
        "role": "judge",
        "text": json.dumps({**PLAN, "diagnosis": f"[{tag}] {PLAN['diagnosis']}"}),
        "cost_usd": cost,
    }


@pytest.fixture
def store(db_url: str) -> RunStore:
    return RunStore(db_url)


def script(tmp_path: Path, items: list[dict]) -> str:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(items))
    return f"scripted:{path}"


def config(**kw: object) -> loop.LoopConfig:
    return loop.LoopConfig(
        evaluation=EvalConfig(device="cpu"), **{"rounds": 3, "patience": None, **kw}
    )


def start(
    store: RunStore, name: str, cfg: loop.LoopConfig, events: list | None = None
) -> loop.OptimizeLoop:
    on_event = events.append if events is not None else None
    return loop.start(
        resolve_problem("softmax"),
        cfg,
        get_model(name, "coder"),
        get_model(name, "judge"),
        store,
        on_event=on_event,
    )


def tags(store: RunStore, run_id: int) -> list[str]:
    """The tag of each recorded answer, in call order."""
    return [m.group(1) for c in store.llm_calls(run_id) if (m := TAG.search(c.response_text))]


def test_rounds_limit_and_records(store, tmp_path):
    name = script(tmp_path, [coder("C0"), judge("J1"), coder("C1"), judge("J2"), coder("C2")])
    events: list = []
    runner = start(store, name, config(rounds=3), events)
    outcome = runner.run()
    assert outcome.status == "finished" and outcome.stops == {0: "rounds: 3 rounds played"}
    history = store.history(outcome.run_id)
    assert [(s.candidate.round, s.candidate.kind, s.status) for s in history] == [
        (0, "initial", "rejected"),
        (1, "repair", "rejected"),
        (2, "repair", "rejected"),
    ]
    assert [s.candidate.parent_id for s in history] == [None, history[0].id, history[1].id]
    assert JudgePlan.model_validate(history[1].plan).diagnosis.startswith("[J1]")
    calls = store.llm_calls(outcome.run_id)
    assert [(c.role, c.round) for c in calls] == [
        ("coder", 0),
        ("judge", 1),
        ("coder", 1),
        ("judge", 2),
        ("coder", 2),
    ]
    assert [c.candidate_id for c in calls] == [
        history[0].id,
        history[0].id,
        history[1].id,
        history[1].id,
        history[2].id,
    ]
    # the Judge saw the static check's reason, the Coder the Judge's diagnosis
    judge_prompt = json.loads(calls[1].messages_json)[1]["content"]
    assert "Verdict: **rejected**" in judge_prompt and "static check" in judge_prompt
    assert "[J1] rejected" in json.loads(calls[2].messages_json)[1]["content"]
    assert outcome.best_candidate_id is None
    assert [e.kind for e in events].count("evaluated") == 3 and events[-1].kind == "stopped"


def test_patience_and_budget(store, tmp_path):
    items = [
        coder("C0", 0.01),
        judge("J1", 0.01),
        coder("C1", 0.01),
        judge("J2", 0.01),
        coder("C2", 0.01),
    ]
    outcome = start(store, script(tmp_path, items), config(rounds=10, patience=2)).run()
    assert outcome.stops[0].startswith("patience") and outcome.candidates == 2

    outcome = start(store, script(tmp_path, items), config(rounds=10, budget_usd=0.025)).run()
    assert outcome.stops[0].startswith("budget_usd")
    assert len(store.llm_calls(outcome.run_id)) == 3 and outcome.cost_usd == pytest.approx(0.03)

    outcome = start(store, script(tmp_path, items), config(rounds=10, time_limit_s=1e-9)).run()
    assert outcome.stops[0].startswith("time_limit") and store.llm_calls(outcome.run_id) == []


def test_malformed_answers_are_retried_once_and_never_crash(store, tmp_path):
    items = [
        {"role": "coder", "text": "I'd write a kernel."},
        {"role": "coder", "text": "```python\nprint('no ModelNew here')\n```"},
        coder("C1"),
        {"role": "judge", "text": "{'diagnosis': 'single quotes'}"},
        {"role": "judge", "text": "still not JSON"},
        coder("C2"),
    ]
    events: list = []
    outcome = start(store, script(tmp_path, items), config(rounds=3), events).run()
    assert outcome.status == "finished"
    calls = store.llm_calls(outcome.run_id)
    assert [c.error.split(":")[0] for c in calls] == [
        "unusable answer",
        "unusable answer",
        "",
        "unusable answer",
        "unusable answer",
        "",
    ]
    history = store.history(outcome.run_id)
    # round 0 produced nothing; round 1 starts afresh; round 2 repairs without a plan
    assert [(s.candidate.round, s.candidate.kind) for s in history] == [
        (1, "initial"),
        (2, "repair"),
    ]
    assert history[1].candidate.plan_json == ""
    repair_prompt = json.loads(calls[-1].messages_json)[1]["content"]
    assert (
        "No usable diagnosis this round" in repair_prompt
        and "round 0 (initial) -> no usable code" in repair_prompt
    )
    reminder = json.loads(calls[1].messages_json)
    assert (
        reminder[-2]["role"] == "assistant"
        and "could not be used: no ```python code block" in reminder[-1]["content"]
    )
    assert sum(e.kind == "unusable" for e in events) == 4


def test_parallel_trajectories(store, tmp_path):
    items = [coder(f"C{i}") for i in range(4)] + [judge(f"J{i}") for i in range(2)]
    outcome = start(store, script(tmp_path, items), config(rounds=2, width=2)).run()
    assert outcome.status == "finished" and set(outcome.stops) == {0, 1}
    rounds = sorted(
        (s.candidate.trajectory, s.candidate.round) for s in store.history(outcome.run_id)
    )
    assert rounds == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(tags(store, outcome.run_id)) == ["C0", "C1", "C2", "C3", "J0", "J1"]


def test_llm_error_fails_the_run_and_resume_continues(store, tmp_path):
    items = [
        coder("C0"),
        judge("J1"),
        {"role": "coder", "error": "provider down"},
        coder("C1"),
        judge("J2"),
        coder("C2"),
    ]
    name = script(tmp_path, items)
    first = start(store, name, config(rounds=3)).run()
    assert (
        first.status == "failed"
        and "provider down" in first.error
        and first.stops[0].startswith("llm_error")
    )
    assert first.candidates == 1

    events: list = []
    second = loop.resume(
        first.run_id,
        get_model(name, "coder"),
        get_model(name, "judge"),
        store,
        on_event=events.append,
    ).run()
    assert second.status == "finished" and second.candidates == 3
    calls = store.llm_calls(first.run_id)
    assert [c.error.split(":")[0] for c in calls] == ["", "", "LLMError", "", "", ""]
    assert tags(store, first.run_id) == ["C0", "J1", "C1", "J2", "C2"]
    assert [e.replayed for e in events if e.kind in ("plan", "evaluated")][:2] == [True, True]
    with pytest.raises(ResumeError, match="finished"):
        loop.resume(first.run_id, get_model(name, "coder"), get_model(name, "judge"), store)


def _timed(
    speedup: float | None, status: Status = Status.correct, suspicious: bool = False
) -> loop.Evaluated:
    stats = TimingStats(
        n=50, median_ms=1.0, p20_ms=1.0, p80_ms=1.0, mean_ms=1.0, cv=0.0, host_median_ms=1.0
    )
    result = EvalResult(
        status=status,
        problem="softmax",
        backend="triton",
        environment=Environment(device="cuda"),
        timings=[SetTiming(input_set="large", candidate=stats)] if speedup else [],
        timing_meaningful=speedup is not None,
        speedup_vs_eager=speedup,
        suspicious=suspicious,
    )
    return loop.Evaluated(
        candidate_id=1, round=0, kind="initial", source="", result=result, plan=None
    )


def test_what_counts_as_an_improvement():
    better = loop.is_improvement
    assert better(_timed(None), None, 0.02)
    assert not better(_timed(None, Status.incorrect), None, 0.02)
    assert better(_timed(None), _timed(None, Status.compiled), 0.02)
    assert not better(_timed(None, Status.compiled), _timed(1.0), 0.02)
    assert better(_timed(1.5), _timed(1.2), 0.02)
    assert not better(_timed(1.21), _timed(1.2), 0.02)  # within min_gain: noise, not progress
    assert not better(_timed(None), _timed(None), 0.02)  # cpu: no timings, the earlier one stays
    assert not better(_timed(50.0, suspicious=True), _timed(1.2), 0.02)


class Interrupting:
    """A model that answers from a script and plays Ctrl-C during its `at`-th call (1-based):
    `stop_soon` once, or `stop_now` too when `twice`."""

    def __init__(self, name: str, role: str, at: int) -> None:
        self.inner = get_model(name, role)
        self.model_id = self.inner.model_id
        self.at = at
        self.calls = 0
        self.runner: loop.OptimizeLoop | None = None

    def complete(self, messages, options):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls == self.at:
            self.runner.stop_soon()
        return self.inner.complete(messages, options)


def test_first_interrupt_finishes_the_call_in_flight_and_starts_nothing(store, tmp_path):
    """Ctrl-C during the Judge's call: its answer is recorded; no Coder call, no evaluation."""
    name = script(tmp_path, [coder("C0"), judge("J1"), coder("C1"), judge("J2"), coder("C2")])
    coder_model, judge_model = Interrupting(name, "coder", 0), Interrupting(name, "judge", 1)
    notices: list[str] = []
    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=3),
        coder_model,
        judge_model,
        store,
        on_interrupt=notices.append,
    )
    judge_model.runner = runner
    outcome = runner.run()
    assert outcome.status == "interrupted" and outcome.stops == {0: "interrupted"}
    assert notices == ["stopping after this step (Ctrl-C again to stop now)"]
    calls = store.llm_calls(outcome.run_id)
    assert [(c.role, c.round) for c in calls] == [("coder", 0), ("judge", 1)]
    assert (coder_model.calls, judge_model.calls) == (1, 1)
    assert [s.candidate.round for s in store.history(outcome.run_id)] == [0]

    # resumed, the run goes on from the recorded Judge answer
    resumed = loop.resume(outcome.run_id, get_model(name, "coder"), get_model(name, "judge"), store)
    assert resumed.run().status == "finished"
    assert tags(store, outcome.run_id) == ["C0", "J1", "C1", "J2", "C2"]


def test_interrupt_during_the_coder_call_skips_the_evaluation(store, tmp_path):
    name = script(tmp_path, [coder("C0"), judge("J1"), coder("C1")])
    coder_model = Interrupting(name, "coder", 2)
    runner = loop.start(
        resolve_problem("softmax"), config(rounds=3), coder_model, get_model(name, "judge"), store
    )
    coder_model.runner = runner
    outcome = runner.run()
    assert outcome.status == "interrupted"
    assert [(c.role, c.round) for c in store.llm_calls(outcome.run_id)] == [
        ("coder", 0),
        ("judge", 1),
        ("coder", 1),
    ]
    assert [s.candidate.round for s in store.history(outcome.run_id)] == [0]  # C1 not evaluated


def test_budget_with_an_unpriced_model_is_unknown_cost(sqlite_url, tmp_path):
    from forge.agents.llm import LiteLLMModel

    store = RunStore(sqlite_url)  # about litellm's prices: one backend is enough

    name = script(tmp_path, [coder("C0")])
    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=1, budget_usd=1.0),
        LiteLLMModel("openai/stub-unpriced"),
        get_model(name, "judge"),
        store,
    )
    assert not runner.cost_known


def _at_speed_of_light(fraction: float):
    """An evaluator (the loop's interface) whose every verdict is a timed, correct candidate
    running at `fraction` of the roofline at its target set."""
    stats = TimingStats(
        n=50, median_ms=1.0, p20_ms=1.0, p80_ms=1.0, mean_ms=1.0, cv=0.0, host_median_ms=0.01
    )

    def evaluate(problem, source):  # noqa: ANN001, ANN202
        timing = SetTiming(
            input_set="large",
            target=True,
            candidate=stats,
            eager=stats.model_copy(update={"median_ms": 1.5}),
            speedup_vs_eager=1.5,
            floor_ms=fraction,
            roofline_fraction=fraction,
        )
        return EvalResult(
            status=Status.correct,
            problem=problem.name,
            backend="triton",
            environment=Environment(device="cuda", gpu_name="NVIDIA H200"),
            timings=[timing],
            timing_meaningful=True,
            speedup_vs_eager=1.5,
            target_sets=["large"],
        )

    return evaluate


@pytest.mark.parametrize(
    ("fraction", "sol_stop", "calls"),
    [
        (0.97, 0.95, ["coder"]),
        (0.97, None, ["coder", "judge", "coder"]),
        (0.6, 0.95, ["coder", "judge", "coder"]),
    ],
)
def test_a_trajectory_at_the_speed_of_light_stops(store, tmp_path, fraction, sol_stop, calls):
    """Within `sol_stop` of the roofline at the target sets nothing is left to win: the
    trajectory stops and says so; below it (or with the stop off) the Judge is asked, and sees
    the headroom."""
    name = script(tmp_path, [coder("C0"), judge("J1"), coder("C1")])
    events: list = []
    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=2, sol_stop=sol_stop),
        get_model(name, "coder"),
        get_model(name, "judge"),
        store,
        evaluator=_at_speed_of_light(fraction),
        on_event=events.append,
    )
    outcome = runner.run()
    assert [c.role for c in store.llm_calls(outcome.run_id)] == calls
    if calls == ["coder"]:
        assert outcome.stops[0] == (
            f"speed_of_light: candidate {outcome.best_candidate_id} runs at 97% of the speed of "
            "light at the target sets (the run stops a trajectory at 95%)"
        )
        assert events[-1].kind == "stopped" and "speed of light" in events[-1].detail
    else:
        assert outcome.stops[0].startswith("rounds")
        judge_prompt = json.loads(store.llm_calls(outcome.run_id, role="judge")[0].messages_json)
        headroom = f"runs at {fraction:.0%} of the speed of light"
        assert headroom in judge_prompt[-1]["content"]
        assert (
            "stops this trajectory once its best reaches 95%" in judge_prompt[-1]["content"]
        ) == (sol_stop is not None)


def timed_coder(ms: float) -> dict:
    """A Coder answer whose candidate the `by_device_time` evaluator times at `ms`."""
    return {"role": "coder", "text": f"```python\n# ms={ms}\n{FALLBACK}```"}


def by_device_time(problem, source):  # noqa: ANN001, ANN201 (the loop's Evaluator interface)
    """Every candidate correct, timed at the `# ms=` its source declares, at the target set."""
    ms = float(re.search(r"# ms=([\d.]+)", source).group(1))
    stats = TimingStats(
        n=50, median_ms=ms, p20_ms=ms, p80_ms=ms, mean_ms=ms, cv=0.0, host_median_ms=0.01
    )
    eager = stats.model_copy(update={"median_ms": 1.0})
    timing = SetTiming(
        input_set="large", target=True, candidate=stats, eager=eager, speedup_vs_eager=1.0 / ms
    )
    return EvalResult(
        status=Status.correct,
        problem=problem.name,
        backend="triton",
        environment=Environment(device="cuda", gpu_name="NVIDIA H200"),
        timings=[timing],
        timing_meaningful=True,
        speedup_vs_eager=1.0 / ms,
        target_sets=["large"],
    )


def test_best_of_n_goes_on_from_the_fastest_and_the_judge_sees_all(store, tmp_path):
    items = [timed_coder(0.8), timed_coder(0.5), judge("J1"), timed_coder(0.6), timed_coder(0.4)]
    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=2, candidates_per_round=2),
        get_model(script(tmp_path, items), "coder"),
        get_model(script(tmp_path, items), "judge"),
        store,
        evaluator=by_device_time,
    )
    outcome = runner.run()
    history = store.history(outcome.run_id)
    assert [(s.candidate.round, s.result.timings[0].candidate.median_ms) for s in history] == [
        (0, 0.8),
        (0, 0.5),
        (1, 0.6),
        (1, 0.4),
    ]
    fastest = history[1].id
    assert [s.candidate.parent_id for s in history[2:]] == [fastest, fastest]
    assert outcome.best_candidate_id == history[3].id
    judge_prompt = json.loads(store.llm_calls(outcome.run_id, role="judge")[0].messages_json)
    turn = judge_prompt[-1]["content"]
    assert "## The 2 answers of round 0 to one prompt" in turn
    assert f"- candidate {history[0].id}: correct, 0.8000 ms at the target set(s)" in turn
    assert (
        f"- candidate {fastest}: correct, 0.5000 ms at the target set(s), 2.00x vs eager [kept"
        in turn
    )
    assert "goes on from the fastest at the target set(s)" in turn and "# ms=0.5" in turn


def test_best_of_n_on_cpu_keeps_the_first_and_resumes_mid_round(store, tmp_path):
    """Without timings the first of equals is kept (and the Judge is told why); a run that
    failed between a round's answers resumes with the recorded ones and asks for the rest."""
    items = [
        coder("C0"),
        coder("C1"),
        judge("J1"),
        coder("C2"),
        {"role": "coder", "error": "provider down"},
        coder("C3"),
    ]
    name = script(tmp_path, items)
    first = start(store, name, config(rounds=2, candidates_per_round=2)).run()
    assert first.status == "failed" and first.candidates == 3
    history = store.history(first.run_id)
    assert [s.candidate.parent_id for s in history] == [None, None, history[0].id]
    turn = json.loads(store.llm_calls(first.run_id, role="judge")[0].messages_json)[-1]["content"]
    assert f"- candidate {history[0].id}: rejected" in turn and "[kept: shown below]" in turn
    assert "goes on from the first one (none passed)" in turn

    second = loop.resume(first.run_id, get_model(name, "coder"), get_model(name, "judge"), store)
    assert second.run().status == "finished"
    history = store.history(first.run_id)
    assert [(s.candidate.round, s.candidate.parent_id) for s in history][2:] == [
        (1, history[0].id),
        (1, history[0].id),
    ]
    assert tags(store, first.run_id) == ["C0", "C1", "J1", "C2", "C3"]


CONFIGURED = (KERNELS / "configs_row.py").read_text()
FALLBACK_CONFIGS = FALLBACK.replace(
    "import torch.nn as nn\n", "import torch.nn as nn\n\nCONFIGS = [{'DIM': -1}, {'DIM': 1}]\n"
)


def answer(tag: str, source: str) -> dict:
    return {"role": "coder", "text": f"[{tag}]\n```python\n{source}```"}


def pinned(source: str) -> str:
    return next(line.split("  #")[0] for line in source.splitlines() if line.startswith("CONFIG "))


def test_an_answer_with_configs_keeps_its_first_correct_config_on_cpu(sqlite_url, tmp_path):
    """Three configs of a real Triton kernel, sandboxed under the interpreter: the one whose
    BLOCK is shorter than a row is recorded incorrect; on cpu the first correct one is kept,
    with its CONFIG pinned, and the Judge's next prompt shows every config's verdict."""
    store = RunStore(sqlite_url)  # three sandboxed evaluations: one database backend is enough
    items = [answer("C0", CONFIGURED), judge("J1"), coder("C1")]
    events: list = []
    outcome = start(store, script(tmp_path, items), config(rounds=2), events).run()
    assert outcome.status == "finished"
    history = store.history(outcome.run_id)
    assert [(s.candidate.round, s.status) for s in history] == [
        (0, "incorrect"),
        (0, "correct"),
        (0, "correct"),
        (1, "rejected"),
    ]
    assert [pinned(s.candidate.source) for s in history[:3]] == [
        "CONFIG = {'BLOCK': 64, 'num_warps': 2}",
        "CONFIG = {'BLOCK': 1024, 'num_warps': 4}",
        "CONFIG = {'BLOCK': 2048, 'num_warps': 8}",
    ]
    assert "config 2 of 3, pinned by the evaluator" in history[1].candidate.source
    assert {s.candidate.parent_id for s in history[:3]} == {None}
    kept = history[1].id
    assert history[3].candidate.parent_id == kept and outcome.best_candidate_id == kept
    coder_calls = store.llm_calls(outcome.run_id, role="coder")
    assert coder_calls[0].candidate_id == kept
    assert outcome.candidates == 4

    turn = json.loads(store.llm_calls(outcome.run_id, role="judge")[0].messages_json)[-1]["content"]
    assert "## Its 3 configurations (`CONFIGS`), each evaluated as a candidate" in turn
    assert (
        f'- config 1 `{{"BLOCK": 64, "num_warps": 2}}` (candidate {history[0].id}): incorrect; '
        "mismatch on input set" in turn
    )
    assert f"(candidate {kept}): correct [kept: pinned as `CONFIG` above]" in turn
    assert "first config that passed (without timings the configs cannot be ranked)" in turn
    assert "CONFIG = {'BLOCK': 1024, 'num_warps': 4}" in turn  # the kept source, shown in full
    system = json.loads(coder_calls[0].messages_json)[0]["content"]
    assert "declare up to 8 of them" in system
    said = [(e.kind, e.candidate_id, e.detail) for e in events if e.round == 0]
    assert said == [
        ("candidate", history[0].id, "config 1 of 3"),
        ("candidate", history[1].id, "config 2 of 3"),
        ("candidate", history[2].id, "config 3 of 3"),
        ("evaluated", kept, "config 2 of 3 kept: the first that passed (nothing is timed here)"),
    ]


def test_the_fastest_correct_config_is_kept_when_timed(store, tmp_path):
    """Timed (the `by_device_time` evaluator), the answer's result is its fastest config."""
    source = f"CONFIGS = [{{'A': 9}}, {{'A': 3}}, {{'A': 6}}]\n{FALLBACK}"

    def timed(problem, variant):  # noqa: ANN001, ANN202 (A tenths of a ms; 1 ms without CONFIG)
        tenths = re.search(r"^CONFIG = \{'A': (\d)\}", variant, re.MULTILINE)
        return by_device_time(problem, f"# ms={int(tenths[1]) / 10 if tenths else 1.0}")

    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=2),
        get_model(script(tmp_path, [answer("C0", source), judge("J1"), coder("C1")]), "coder"),
        get_model(script(tmp_path, [answer("C0", source), judge("J1"), coder("C1")]), "judge"),
        store,
        evaluator=timed,
    )
    outcome = runner.run()
    history = store.history(outcome.run_id)
    assert len(history) == 4 and history[3].candidate.parent_id == history[1].id
    turn = json.loads(store.llm_calls(outcome.run_id, role="judge")[0].messages_json)[-1]["content"]
    assert (
        f'- config 2 `{{"A": 3}}` (candidate {history[1].id}): correct, 0.3000 ms at the target '
        "set(s) [kept" in turn
    )
    assert "The candidate is its fastest config at the target set(s)." in turn
    assert loop.config_choice(runner.best) == "config 2 of 3 kept: the fastest correct one"


class GatheringExecutor:
    """An executor (the `Executor` interface) that answers a config only once all three configs
    of the answer are in hand: configs sent one after another never meet at its barrier."""

    def __init__(self):
        self.barrier = threading.Barrier(3, timeout=30)

    def evaluate(self, problem, variant, config):  # noqa: ANN001, ANN201
        tenths = re.search(r"^CONFIG = \{'A': (\d)\}", variant, re.MULTILINE)
        if tenths:
            self.barrier.wait()
        return by_device_time(problem, f"# ms={int(tenths[1]) / 10 if tenths else 1.0}")

    def close(self) -> None:
        pass


def test_an_executor_gets_all_configs_of_an_answer_at_once(store, tmp_path):
    """Through an executor (a queue a GPU host drains, Ray, several local workers) the configs
    are submitted together, so one drain of a queue evaluates them all."""
    source = f"CONFIGS = [{{'A': 9}}, {{'A': 3}}, {{'A': 6}}]\n{FALLBACK}"
    items = [answer("C0", source), judge("J1"), coder("C1")]
    runner = loop.start(
        resolve_problem("softmax"),
        config(rounds=2),
        get_model(script(tmp_path, items), "coder"),
        get_model(script(tmp_path, items), "judge"),
        store,
        executor=GatheringExecutor(),
    )
    outcome = runner.run()
    assert outcome.status == "finished"
    assert loop.config_choice(runner.best) == "config 2 of 3 kept: the fastest correct one"
    assert [s.candidate.round for s in store.history(outcome.run_id)] == [0, 0, 0, 1]


def test_malformed_configs_are_a_verdict_the_coder_repairs(store, tmp_path):
    """A CONFIG read without CONFIGS, or more configs than `max_configs`: recorded as a
    rejected candidate with the reason (nothing evaluated), which the Judge and the Coder see."""
    reads = FALLBACK.replace("dim=-1", "dim=CONFIG['DIM']")
    items = [
        answer("C0", reads),
        judge("J1"),
        answer("C1", FALLBACK_CONFIGS),
        judge("J2"),
        coder("C2"),
    ]
    outcome = start(store, script(tmp_path, items), config(rounds=3, max_configs=1)).run()
    assert outcome.status == "finished"
    history = store.history(outcome.run_id)
    assert [(s.candidate.round, s.status) for s in history] == [
        (0, "rejected"),
        (1, "rejected"),
        (2, "rejected"),
    ]
    assert history[0].result.reasons == [
        "autotune configs: `CONFIG` is read but no module-level `CONFIGS` list declares the "
        "configs to choose it from"
    ]
    assert history[0].result.phase_seconds.total == 0.0  # not evaluated
    assert history[1].result.reasons == [
        "autotune configs: `CONFIGS` lists 2 configs; the evaluator tries at most 1"
    ]
    calls = store.llm_calls(outcome.run_id)
    assert (
        "`CONFIG` is read but no module-level" in json.loads(calls[1].messages_json)[-1]["content"]
    )
    assert "evaluator tries at most 1" in json.loads(calls[4].messages_json)[-1]["content"]
    assert "declare up to 1 of them" in json.loads(calls[0].messages_json)[0]["content"]


def test_autotune_configs_off_treats_configs_as_plain_code(store, tmp_path):
    items = [answer("C0", FALLBACK_CONFIGS)]
    on = start(store, script(tmp_path, items), config(rounds=1)).run()
    assert [s.status for s in store.history(on.run_id)] == ["rejected", "rejected"]
    off = start(store, script(tmp_path, items), config(rounds=1, autotune_configs=False)).run()
    history = store.history(off.run_id)
    assert len(history) == 1 and history[0].candidate.source == FALLBACK_CONFIGS
    assert history[0].result.reasons[0].startswith("static check")
    system = json.loads(store.llm_calls(off.run_id)[0].messages_json)[0]["content"]
    assert "CONFIGS" not in system and "CONFIG" not in system
    assert parse_search(["autotune_configs=false", "max_configs=3"]) == {
        "autotune_configs": False,
        "max_configs": 3,
    }


def test_a_run_with_configs_resumes_from_its_recorded_variants(store, tmp_path):
    items = [
        answer("C0", FALLBACK_CONFIGS),
        judge("J1"),
        {"role": "coder", "error": "provider down"},
        coder("C1"),
    ]
    name = script(tmp_path, items)
    first = start(store, name, config(rounds=2)).run()
    assert first.status == "failed" and first.candidates == 2
    second = loop.resume(first.run_id, get_model(name, "coder"), get_model(name, "judge"), store)
    assert second.run().status == "finished"
    history = store.history(first.run_id)
    assert [(s.candidate.round, s.candidate.parent_id) for s in history] == [
        (0, None),
        (0, None),
        (1, history[0].id),
    ]
