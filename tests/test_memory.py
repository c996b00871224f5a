"""Memory across runs (forge.agents.memory): the Coder's first example is the best verified
kernel of the most similar operator in the database or the library, else the fixed example,
and the prompt says which. Real SQLite database, results built as the evaluator writes them."""

from __future__ import annotations

import json

import pytest
from test_library_helpers import make_result

from forge.agents import loop, memory
from forge.agents.llm import get_model
from forge.db.library import promote
from forge.db.store import RunStore
from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import Environment, EvalResult, Status

SOFTMAX = resolve_problem("softmax")
LOG_SOFTMAX = resolve_problem("log_softmax")
GELU = resolve_problem("gelu")


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    return RunStore(f"sqlite:///{tmp_path / 'forge.db'}")


def stored_run(
    store: RunStore, problem, source: str, speedup: float | None, precision: str | None = None
) -> tuple[int, int]:
    """A finished run whose best candidate is `source`: timed at `speedup` on a GPU, or
    verified on the CPU only (None)."""
    config = {"evaluation": {"precision": precision}}
    device = "cuda" if speedup is not None else "cpu"
    run = store.create_run(problem, config, "scripted", "scripted", "triton", device)
    cid = store.add_candidate(run, 0, 0, source, "triton", "initial")
    if speedup is None:
        result = EvalResult(
            status=Status.correct,
            problem=problem.name,
            backend="triton",
            environment=Environment(device="cpu"),
        )
    else:
        result = make_result(problem, {s.name: speedup for s in problem.input_sets})
    store.add_evaluation(cid, result)
    store.update_run_totals(run)
    return run, cid


def kernel(tag: str) -> str:
    return f"# {tag}\nclass ModelNew:\n    pass\n"


def test_similarity_is_simple_and_explainable():
    assert memory.operator_words("LayerNorm", "") == {"layer", "norm"}
    assert memory.operator_words("23_Softmax", SOFTMAX.source) == {"softmax"}
    assert memory.operator_words(LOG_SOFTMAX.name, LOG_SOFTMAX.source) == {"log", "softmax"}
    assert memory.similarity(SOFTMAX, "softmax", "", "") == 1.0
    assert memory.similarity(SOFTMAX, "other", SOFTMAX.aten, "") == 1.0  # same ATen op
    assert memory.similarity(LOG_SOFTMAX, SOFTMAX.name, "", SOFTMAX.source) == 0.5
    assert memory.similarity(LOG_SOFTMAX, GELU.name, "", GELU.source) == 0.0


def test_nothing_similar_falls_back_to_the_fixed_example_and_says_so(store):
    stored_run(store, GELU, kernel("gelu"), 1.4)
    (example,) = memory.examples_for(store, SOFTMAX, "triton")
    assert example.origin.startswith("the fixed example prompts/examples/")
    assert "no verified kernel of a similar operator" in example.origin
    assert example.problem != "softmax" and not example.same_operator


def test_the_most_similar_then_the_fastest_timed_kernel_is_recalled(store):
    stored_run(store, GELU, kernel("gelu"), 3.0)
    stored_run(store, SOFTMAX, kernel("softmax on cpu"), None)
    run, cid = stored_run(store, SOFTMAX, kernel("softmax slow"), 1.2)
    fast_run, fast = stored_run(store, SOFTMAX, kernel("softmax fast"), 1.8)
    (example,) = memory.examples_for(store, SOFTMAX, "triton")
    assert example.source == kernel("softmax fast") and example.same_operator
    assert example.origin == (
        f"the best of run {fast_run}, candidate {fast}: 1.80x vs eager on NVIDIA H100; "
        "similarity 1.00"
    )
    # a similar operator's kernel, when the operator itself was never solved
    (similar,) = memory.examples_for(store, LOG_SOFTMAX, "triton")
    assert similar.source == kernel("softmax fast") and similar.origin.endswith("similarity 0.50")
    assert not similar.same_operator
    # the current run's own candidates are not memory; another backend's are not examples
    assert memory.recall(store, SOFTMAX, "triton", exclude_run=fast_run)[0].source == kernel(
        "softmax slow"
    )
    assert memory.recall(store, SOFTMAX, "cuda") == []
    assert len(memory.recall(store, SOFTMAX, "triton", limit=3)) == 3


def test_library_entries_count_once_and_precision_is_respected(store):
    run, cid = stored_run(store, SOFTMAX, kernel("promoted"), 1.6)
    entry = promote(store, cid)
    found = memory.recall(store, SOFTMAX, "triton", limit=5)
    assert [e.source for e in found] == [kernel("promoted")]  # the library's copy counts once
    assert found[0].origin.startswith(f"library entry {entry.id}: 1.")
    stored_run(store, SOFTMAX, kernel("tf32"), 5.0, precision="tf32")
    assert memory.recall(store, SOFTMAX, "triton")[0].source == kernel("promoted")
    assert memory.recall(store, SOFTMAX, "triton", precision="tf32")[0].source == kernel("tf32")


def test_the_first_coder_prompt_shows_the_recalled_kernel(store, tmp_path):
    """A real run (scripted model): its first Coder prompt, as recorded, holds the earlier
    run's best kernel and where it came from."""
    run, cid = stored_run(store, SOFTMAX, kernel("earlier best"), 1.7)
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"role": "coder", "text": "no code"}] * 2))
    name = f"scripted:{script}"
    outcome = loop.start(
        SOFTMAX,
        loop.LoopConfig(evaluation=EvalConfig(device="cpu"), rounds=1, patience=None),
        get_model(name, "coder"),
        get_model(name, "judge"),
        store,
    ).run()
    prompt = json.loads(store.llm_calls(outcome.run_id, role="coder")[0].messages_json)[1]
    assert "## A verified kernel for this same operator" in prompt["content"]
    assert f"From the best of run {run}, candidate {cid}: 1.70x" in prompt["content"]
    assert (
        "# earlier best" in prompt["content"]
        and "Start from the verified kernel" in prompt["content"]
    )
