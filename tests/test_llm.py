"""LLM access: the litellm path over real HTTP against a local OpenAI-compatible stub
(tests/openai_stub.py), the scripted model, recording to the database, model resolution, and
provider keys kept out of the database and the logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Reply
from test_db import dump_text_columns

from forge.agents.interfaces import LLMOptions, Message
from forge.agents.llm import (
    LiteLLMModel,
    LLMError,
    LLMMalformedResponse,
    LLMRateLimited,
    LLMRequestError,
    LLMResult,
    LLMServerError,
    LLMTimeout,
    NoModelConfigured,
    RecordingModel,
    ScriptedModel,
    ScriptError,
    ScriptExhausted,
    get_model,
    resolve_models,
    resume_model,
)
from forge.db.redact import install_log_redaction
from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem

SECRET = "sk-test-SECRET"
MODEL = "openai/test-model"
MESSAGES = [
    Message(role="system", content="You write Triton kernels."),
    Message(role="user", content="softmax"),
]


@pytest.fixture(autouse=True)
def provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(f"sqlite:///{tmp_path / 'forge.db'}")


@pytest.fixture
def run_id(store: RunStore) -> int:
    return store.create_run(resolve_problem("softmax"), {}, MODEL, MODEL, "triton", "cpu")


def options(stub: OpenAIStub, **kw: object) -> LLMOptions:
    return LLMOptions(
        api_base=stub.api_base, backoff_s=0.01, **{"retries": 2, "timeout_s": 5.0, **kw}
    )


# ------------------------------------------------------------ litellm path


def test_success_reports_usage_and_sends_the_request() -> None:
    with OpenAIStub(
        [Reply.ok("```python\nkernel\n```", prompt_tokens=120, completion_tokens=30)]
    ) as stub:
        result = LiteLLMModel(MODEL).complete(
            MESSAGES, options(stub, temperature=0.3, max_tokens=99)
        )
    assert isinstance(result, LLMResult)
    assert result.text == "```python\nkernel\n```"
    assert (result.prompt_tokens, result.completion_tokens, result.attempts) == (120, 30, 1)
    assert result.cost_usd == 0.0 and not result.cost_known  # no price for a made-up model
    assert result.latency_s > 0
    [request] = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["json"]["model"] == "test-model"
    assert request["json"]["messages"] == [m.model_dump() for m in MESSAGES]
    assert (request["json"]["temperature"], request["json"]["max_tokens"]) == (0.3, 99)
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"  # the key really was in play


def test_cost_from_litellms_local_price_map() -> None:
    with OpenAIStub([Reply.ok("hi", 1000, 1000, model="gpt-4o-mini")]) as stub:
        result = LiteLLMModel("openai/gpt-4o-mini").complete(MESSAGES, options(stub))
    assert result.cost_known and 0 < result.cost_usd < 0.01


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_error_then_success_is_retried(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        OpenAIStub([Reply.error(status), Reply.ok("ok")]) as stub,
        caplog.at_level(logging.WARNING, "forge.llm"),
    ):
        result = LiteLLMModel(MODEL).complete(MESSAGES, options(stub))
    assert result.text == "ok" and result.attempts == 2
    assert len(stub.requests) == 2  # our retry, and only ours (litellm's and the SDK's are off)
    [record] = caplog.records
    assert "attempt 1 of 3" in record.getMessage()


def test_rate_limit_exhausts_retries() -> None:
    with OpenAIStub([Reply.error(429, "slow down")]) as stub:
        with pytest.raises(LLMRateLimited) as info:
            LiteLLMModel(MODEL).complete(MESSAGES, options(stub, retries=2))
    assert len(stub.requests) == 3
    err = info.value
    assert (err.model, err.attempts, err.status) == (MODEL, 3, 429)
    assert "rate limited (429) after 3 attempts" in str(err) and "slow down" in str(err)


def test_refused_request_is_not_retried() -> None:
    with OpenAIStub([Reply.error(401, f"Incorrect API key provided: {SECRET}")]) as stub:
        with pytest.raises(LLMRequestError) as info:
            LiteLLMModel(MODEL).complete(MESSAGES, options(stub))
    assert len(stub.requests) == 1 and info.value.status == 401
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (Reply.empty_choices(), LLMMalformedResponse, "no choices"),
        (Reply.empty_content(), LLMMalformedResponse, "message is empty"),
        (Reply.ok("   \n"), LLMMalformedResponse, "message is empty"),
        (Reply.raw(b"{not json"), LLMServerError, "server error after 1 attempt"),
    ],
)
def test_malformed_responses_raise_llm_error(
    reply: Reply, error: type[LLMError], message: str
) -> None:
    with OpenAIStub([reply]) as stub:
        with pytest.raises(error, match=message) as info:
            LiteLLMModel(MODEL).complete(MESSAGES, options(stub, retries=0))
    assert isinstance(info.value, LLMError) and info.value.model == MODEL
    assert len(stub.requests) == 1


def test_slow_response_times_out_and_is_retried() -> None:
    with OpenAIStub([Reply.slow(5.0), Reply.ok("in time")]) as stub:
        result = LiteLLMModel(MODEL).complete(MESSAGES, options(stub, timeout_s=0.3))
    assert result.text == "in time" and result.attempts == 2


def test_timeout_after_retries() -> None:
    with OpenAIStub([Reply.slow(5.0)]) as stub:
        with pytest.raises(LLMTimeout, match="timed out after 2 attempts") as info:
            LiteLLMModel(MODEL).complete(MESSAGES, options(stub, timeout_s=0.2, retries=1))
    assert info.value.attempts == 2 and len(stub.requests) == 2


def test_unreachable_server_is_an_llm_error() -> None:
    with OpenAIStub([Reply.ok("x")]) as stub:
        base = stub.api_base
    with pytest.raises(LLMError, match="after 2 attempts") as info:
        LiteLLMModel(MODEL).complete(MESSAGES, LLMOptions(api_base=base, retries=1, backoff_s=0.01))
    assert info.value.attempts == 2


# --------------------------------------------------------------- recording


def test_recording_model_logs_retries_errors_and_keeps_secrets_out(
    store: RunStore, run_id: int, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    leaky = [*MESSAGES, Message(role="user", content=f"my key is {SECRET}")]
    replies = [
        Reply.error(429),
        Reply.ok(f"answer mentioning {SECRET}", 50, 10),
        Reply.empty_choices(),
        Reply.error(401, f"Incorrect API key provided: {SECRET}"),
    ]
    install_log_redaction([caplog.handler])
    with OpenAIStub(replies) as stub, caplog.at_level(logging.DEBUG):
        coder = RecordingModel(LiteLLMModel(MODEL), store, run_id, "coder").bind(
            trajectory=1, round=2
        )
        ok = coder.complete(leaky, options(stub))
        with pytest.raises(LLMMalformedResponse) as malformed:
            coder.complete(MESSAGES, options(stub))
        with pytest.raises(LLMRequestError) as refused:
            coder.complete(MESSAGES, options(stub))
    calls = store.llm_calls(run_id)
    assert [c.id for c in calls] == [ok.call_id, malformed.value.call_id, refused.value.call_id]
    first, second, third = calls
    assert (first.trajectory, first.round, first.role, first.model) == (1, 2, "coder", MODEL)
    assert (first.attempts, first.prompt_tokens, first.completion_tokens, first.error) == (
        2,
        50,
        10,
        "",
    )
    assert first.latency_s > 0
    assert second.error.startswith("LLMMalformedResponse:") and second.response_text == ""
    assert third.error.startswith("LLMRequestError:") and "401" in third.error
    run = store.get_run(run_id)
    assert (run.prompt_tokens, run.completion_tokens) == (
        50,
        10,
    )  # totals refreshed after each call

    assert SECRET not in dump_text_columns(store.engine)
    assert "[REDACTED:OPENAI_API_KEY]" in first.response_text
    # litellm and the OpenAI SDK log raw responses at DEBUG (the 401 echoes the key): the
    # filter Forge installs on its handlers masks them; nothing reaches stdout/stderr either.
    assert any("[REDACTED" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() + (r.exc_text or "") for r in caplog.records)
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_recording_model_with_a_plain_llm(store: RunStore, run_id: int) -> None:
    class Echo:
        model_id = "echo"

        def complete(self, messages, options):  # noqa: ANN001, ANN202
            from forge.agents.interfaces import LLMResponse

            return LLMResponse(
                text=messages[-1].content, model="echo", prompt_tokens=3, completion_tokens=4
            )

    result = RecordingModel(Echo(), store, run_id, "judge").complete(MESSAGES, LLMOptions())
    assert result.text == "softmax" and result.call_id is not None
    [call] = store.llm_calls(run_id)
    assert (call.role, call.model, call.attempts, call.completion_tokens) == ("judge", "echo", 1, 4)


# --------------------------------------------------------------- scripted


def write_script(tmp_path: Path, items: list) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(items))
    return path


def test_scripted_model_replays_in_order(tmp_path: Path) -> None:
    path = write_script(tmp_path, ["first answer", {"text": "second", "cost_usd": 0.25}, " "])
    model = get_model(f"scripted:{path}")
    assert isinstance(model, ScriptedModel) and model.model_id == f"scripted:{path}"
    a = model.complete([Message(role="user", content="x" * 40)], LLMOptions())
    assert (a.text, a.prompt_tokens, a.completion_tokens, a.cost_usd) == (
        "first answer",
        10,
        3,
        0.0,
    )
    b = model.complete(MESSAGES, LLMOptions())
    assert (b.text, b.cost_usd) == ("second", 0.25)
    with pytest.raises(LLMMalformedResponse, match="scripted answer is empty"):
        model.complete(MESSAGES, LLMOptions())
    with pytest.raises(ScriptExhausted, match="all 3 scripted answers are used up") as info:
        model.complete(MESSAGES, LLMOptions())
    assert info.value.attempts == 0


def test_coder_and_judge_share_one_script(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        [
            {"role": "coder", "text": "code 0"},
            {"role": "judge", "text": '{"plan": "p1"}'},
            {"role": "coder", "text": "code 1"},
            {"role": "judge", "error": "provider down"},
            "either",
        ],
    )
    coder, judge = (
        get_model(f"scripted:{path}", role="coder"),
        get_model(f"scripted:{path}", role="judge"),
    )
    assert judge.complete(MESSAGES, LLMOptions()).text == '{"plan": "p1"}'
    assert [coder.complete(MESSAGES, LLMOptions()).text for _ in range(3)] == [
        "code 0",
        "code 1",
        "either",
    ]
    with pytest.raises(LLMError, match="scripted error: provider down"):
        judge.complete(MESSAGES, LLMOptions())
    assert judge.complete(MESSAGES, LLMOptions()).text == "either"
    with pytest.raises(ScriptExhausted, match="for role coder"):
        coder.complete(MESSAGES, LLMOptions())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"role": "coder"}]', "item 0 must be"),
        ('[{"role": "critic", "text": "x"}]', "role 'critic'"),
        ('[{"text": 3}]', "must be strings"),
        ('[{"text": "x", "cost_usd": "1"}]', "must be a number"),
    ],
)
def test_bad_script_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScriptError, match=message):
        ScriptedModel(path)
    with pytest.raises(ScriptError, match="does not exist"):
        ScriptedModel(tmp_path / "missing.json")


def test_resume_fast_forwards_a_scripted_model(
    tmp_path: Path, store: RunStore, run_id: int
) -> None:
    path = write_script(tmp_path, [{"role": "coder", "text": f"code {i}"} for i in range(4)])
    coder = RecordingModel(ScriptedModel(path, role="coder"), store, run_id, "coder")
    assert coder.complete(MESSAGES, LLMOptions()).text == "code 0"
    assert coder.complete(MESSAGES, LLMOptions()).text == "code 1"
    # the process dies; a new one rebuilds the model and resumes
    again = RecordingModel(ScriptedModel(path, role="coder"), store, run_id, "coder")
    resume_model(again, store, run_id, "coder")
    assert again.complete(MESSAGES, LLMOptions()).text == "code 2"
    assert [c.response_text for c in store.llm_calls(run_id)] == ["code 0", "code 1", "code 2"]


# ------------------------------------------------------------- resolution


def test_resolve_models() -> None:
    env = {"FORGE_MODEL": "openai/gpt-4o"}
    assert resolve_models(environ=env) == ("openai/gpt-4o", "openai/gpt-4o")
    assert resolve_models("anthropic/claude", environ=env) == (
        "anthropic/claude",
        "anthropic/claude",
    )
    assert resolve_models("a", judge_model="j", environ={}) == ("a", "j")
    assert resolve_models(coder_model="c", environ=env) == ("c", "openai/gpt-4o")
    assert resolve_models(coder_model="c", judge_model="j", environ={}) == ("c", "j")


def test_no_model_configured_names_the_fixes() -> None:
    with pytest.raises(NoModelConfigured) as info:
        resolve_models(environ={})
    message = str(info.value)
    assert "\n" not in message
    for needle in (
        "--model",
        "FORGE_MODEL",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "scripted:FILE",
    ):
        assert needle in message
    with pytest.raises(NoModelConfigured, match="for the judge:"):
        resolve_models(coder_model="c", environ={})


def test_get_model_is_lazy_about_litellm() -> None:
    code = (
        "import sys\n"
        "from forge.agents.llm import get_model\n"
        "m = get_model('anthropic/claude-x')\n"
        "assert type(m).__name__ == 'LiteLLMModel' and m.model_id == 'anthropic/claude-x'\n"
        "assert 'litellm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_litellm_uses_its_local_price_map(monkeypatch: pytest.MonkeyPatch) -> None:
    from forge.agents import llm

    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    llm._litellm.cache_clear()
    llm._litellm()  # already imported by earlier tests: this checks the variable is set first
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "False")
    llm._litellm.cache_clear()
    llm._litellm()
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "False"  # the user's choice stands
