"""What reaches the provider: sampling options only where the model takes them (reasoning models
refuse `temperature`), credentials checked before a run, no retry of a request that cannot
succeed, no retry after Ctrl-C, and whether a model's cost is known. Real HTTP against the local
OpenAI-compatible stub (tests/openai_stub.py), whose reasoning-style models answer a
`temperature` with OpenAI's 400."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Reply

from forge.agents.interfaces import LLMOptions, Message
from forge.agents.llm import (
    LOCAL_SERVER_KEY,
    LiteLLMModel,
    LLMRequestError,
    LLMServerError,
    MissingCredentials,
    ScriptedModel,
    check_credentials,
    cost_known,
    missing_credentials,
)

SECRET = "sk-test-SECRET"
MESSAGES = [Message(role="user", content="softmax")]
REASONING = ["gpt-5", "gpt-5-mini", "o3"]


@pytest.fixture(autouse=True)
def provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def options(stub: OpenAIStub, **kw: object) -> LLMOptions:
    return LLMOptions(
        **{"api_base": stub.api_base, "backoff_s": 0.01, "retries": 2, "timeout_s": 5.0, **kw}
    )


def sent(stub: OpenAIStub) -> dict:
    [request] = stub.requests
    return request["json"]


# ------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", REASONING)
def test_reasoning_model_gets_no_temperature_by_default(name: str) -> None:
    with OpenAIStub([Reply.ok("answer", model=name)]) as stub:
        result = LiteLLMModel(f"openai/{name}").complete(MESSAGES, options(stub))
    assert result.text == "answer"  # the stub answers 400 to any temperature for these models
    body = sent(stub)
    assert "temperature" not in body and "top_p" not in body
    assert body["max_completion_tokens"] == 8192  # litellm's name for it on reasoning models


def test_stub_refuses_temperature_for_a_reasoning_model() -> None:
    """The check the tests above rely on: a temperature sent to one is a 400, not retried."""
    with OpenAIStub([Reply.ok("never")]) as stub:
        with pytest.raises(LLMRequestError, match="'temperature' is not supported") as info:
            LiteLLMModel("openai/stub-reasoner").complete(MESSAGES, options(stub, temperature=0.2))
    assert info.value.status == 400 and info.value.attempts == 1 and len(stub.requests) == 1


@pytest.mark.parametrize("name", REASONING)
def test_a_temperature_the_model_refuses_is_dropped(name: str) -> None:
    with OpenAIStub([Reply.ok("answer", model=name)]) as stub:
        result = LiteLLMModel(f"openai/{name}").complete(MESSAGES, options(stub, temperature=0.7))
    assert result.text == "answer" and "temperature" not in sent(stub)


def test_sampling_options_are_sent_where_the_model_takes_them() -> None:
    with OpenAIStub([Reply.ok("answer")]) as stub:
        LiteLLMModel("openai/gpt-4o").complete(
            MESSAGES, options(stub, temperature=0.7, top_p=0.9, reasoning_effort="high")
        )
    body = sent(stub)
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 8192)
    assert "reasoning_effort" not in body  # gpt-4o does not reason: litellm does not list it

    with OpenAIStub([Reply.ok("answer", model="gpt-5")]) as stub:
        LiteLLMModel("openai/gpt-5").complete(MESSAGES, options(stub, reasoning_effort="low"))
    assert sent(stub)["reasoning_effort"] == "low"


def test_unset_options_are_not_sent() -> None:
    with OpenAIStub([Reply.ok("answer")]) as stub:
        LiteLLMModel("openai/test-model").complete(MESSAGES, options(stub, max_tokens=None))
    body = sent(stub)
    assert not {"temperature", "top_p", "reasoning_effort", "max_tokens"} & body.keys()


# ----------------------------------------------------------- credentials


def test_missing_key_is_named_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingCredentials) as info:
        check_credentials("openai/gpt-5", None)
    message = str(info.value)
    assert "OPENAI_API_KEY is not set" in message and "--api-base" in message
    assert "\n" not in message
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        check_credentials("anthropic/claude-sonnet-4-5", None)


def test_no_key_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OPENAI_API_KEY", "OLLAMA_API_BASE", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    check_credentials("openai/gpt-5", "http://127.0.0.1:8000/v1")  # a local server
    check_credentials(f"scripted:{tmp_path / 'x.json'}", None)
    check_credentials("ollama/llama3", None)  # a default base, not a key
    check_credentials("bedrock/anthropic.claude-3-haiku", None)  # credential files, roles
    assert missing_credentials("openai/gpt-5") == ["OPENAI_API_KEY"]


def test_local_server_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with OpenAIStub([Reply.ok("answer", model="gpt-5")]) as stub:
        result = LiteLLMModel("openai/gpt-5").complete(MESSAGES, options(stub))
    assert result.text == "answer"
    assert stub.requests[0]["headers"]["Authorization"] == f"Bearer {LOCAL_SERVER_KEY}"


def test_missing_key_at_call_time_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK refuses to send it (litellm calls that a 500): one attempt, no backoff."""
    monkeypatch.delenv("OPENAI_API_KEY")
    started = time.monotonic()
    with pytest.raises(LLMRequestError, match="OPENAI_API_KEY") as info:
        LiteLLMModel("openai/gpt-4o").complete(MESSAGES, LLMOptions(retries=4, backoff_s=5.0))
    assert info.value.attempts == 1 and time.monotonic() - started < 5


# ----------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 128000 tokens"),
        (401, "Incorrect API key provided"),
        (403, "not allowed"),
        (404, "The model `gpt-9` does not exist"),
        (422, "unprocessable"),
    ],
)
def test_requests_that_cannot_succeed_are_not_retried(status: int, message: str) -> None:
    with OpenAIStub([Reply.error(status, message), Reply.ok("never")]) as stub:
        with pytest.raises(LLMRequestError) as info:
            LiteLLMModel("openai/test-model").complete(MESSAGES, options(stub, retries=4))
    assert len(stub.requests) == 1 and info.value.attempts == 1


def test_no_retry_once_stopped() -> None:
    """After Ctrl-C a retry would be a new, paid call: the transient error ends the call."""
    model = LiteLLMModel("openai/test-model")
    model.stop.set()
    with OpenAIStub([Reply.error(503), Reply.ok("never")]) as stub:
        with pytest.raises(LLMServerError, match="after 1 attempt"):
            model.complete(MESSAGES, options(stub, retries=4))
    assert len(stub.requests) == 1


# -------------------------------------------------------------------- cost


def test_cost_known_only_for_priced_models(tmp_path: Path) -> None:
    assert cost_known(LiteLLMModel("openai/gpt-4o-mini"))
    assert not cost_known(LiteLLMModel("openai/stub-unpriced"))
    script = tmp_path / "s.json"
    script.write_text('["x"]')
    assert cost_known(ScriptedModel(script))  # a script states its costs
