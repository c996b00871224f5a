"""LLM access: one method, `complete(messages, options) -> LLMResponse`.

- `LiteLLMModel(model_id)`: any provider through litellm by model string (`openai/gpt-4o`,
  `anthropic/claude-...`, `ollama/llama3`, any OpenAI-compatible server with
  `LLMOptions.api_base`). Sampling options are sent only when set and only where the model
  takes them (litellm's list of the model's parameters, and `drop_params` for values a model
  refuses, such as a reasoning model's temperature). Our own retries with exponential backoff
  on rate limits, 5xx, timeouts and connection errors, never on a request that cannot succeed
  (bad key, bad request, unknown model, or one the SDK refused to send); litellm's and the
  OpenAI SDK's retries are switched off so these are the only ones, logged and counted. Per-call
  timeout; tokens from the response's usage; cost from litellm's local price map (0.0, with
  `cost_known` False, for a model it has no price for).
- `check_credentials(model, api_base)`: before a run, the provider's key variables that
  litellm finds missing, as one `MissingCredentials` error (a local server needs no key).
- `ScriptedModel(path)`: replays answers from a JSON file, for tests and offline demos.
- `RecordingModel(inner, store, run_id, role)`: logs every call, successful or not, to the
  database through `RunStore.record_llm_call`.
- `get_model(name)`: `scripted:FILE` is a ScriptedModel, anything else a LiteLLMModel.
- `resolve_models(...)`: `--model`, `--coder-model`, `--judge-model`, `FORGE_MODEL`.

litellm is imported on the first real call only (it takes seconds and, unless told otherwise,
fetches a price map from the network): `forge eval`, the sandbox and the runtime library never
pay for it. `LITELLM_LOCAL_MODEL_COST_MAP=True` is set first unless the user set it.

Errors form one small hierarchy under `LLMError`, each carrying the model, the number of HTTP
attempts made and the last HTTP status; messages are passed through `redact` so a provider key
never reaches a log or the database.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from forge.agents.interfaces import LLM, SAMPLING_OPTIONS, LLMOptions, LLMResponse, Message
from forge.db.redact import install_log_redaction, redact

if TYPE_CHECKING:
    from forge.db.store import RunStore

log = logging.getLogger("forge.llm")

SCRIPTED_PREFIX = "scripted:"
MODEL_ENV = "FORGE_MODEL"
PROVIDER_KEY_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY",
)
SECRET_VARIABLE = re.compile(r"_(API_KEY|API_TOKEN|AUTH_TOKEN)$")
"""Which of the variables litellm reports missing are keys. Others (OLLAMA_API_BASE, AWS_*,
VERTEXAI_PROJECT) have defaults or credential files litellm's check does not see."""
LOCAL_SERVER_KEY = "forge-local-server"
"""Sent as the key to a server given by `api_base` when the provider's key variable is unset
(the OpenAI SDK refuses to send a request without one; a local server ignores it)."""
BACKOFF_JITTER = 0.25
"""Each backoff delay is stretched by up to this fraction at random, so parallel trajectories
that hit a rate limit together do not retry in lockstep."""
DETAIL_LIMIT = 600


# ------------------------------------------------------------------ errors


class LLMError(RuntimeError):
    """An LLM call that produced no usable answer.

    `model`: the model id; `attempts`: HTTP attempts made (0 when none was); `status`: the last
    HTTP status, when there was one; `call_id`: the `llm_call` row that recorded it, when a
    RecordingModel logged it.
    """

    kind = "error"

    def __init__(
        self, message: str, *, model: str, attempts: int = 0, status: int | None = None
    ) -> None:
        self.model = model
        self.attempts = attempts
        self.status = status
        self.call_id: int | None = None
        super().__init__(redact(message))

    @classmethod
    def after(cls, model: str, attempts: int, status: int | None, detail: str) -> LLMError:
        http = f", last HTTP status {status}" if status else ""
        text = " ".join(detail.split())[:DETAIL_LIMIT]
        noun = "attempt" if attempts == 1 else "attempts"
        return cls(
            f"{model}: {cls.kind} after {attempts} {noun}{http}: {text}",
            model=model,
            attempts=attempts,
            status=status,
        )


class LLMTransientError(LLMError):
    """A failure worth retrying; raised once the retries are spent."""

    kind = "transient error"


class LLMRateLimited(LLMTransientError):
    kind = "rate limited (429)"


class LLMServerError(LLMTransientError):
    kind = "server error"


class LLMTimeout(LLMTransientError):
    kind = "timed out"


class LLMConnectionError(LLMTransientError):
    kind = "connection failed"


class LLMRequestError(LLMError):
    """The provider refused the request (bad key, unknown model, context too long ...):
    retrying the same request cannot help."""

    kind = "request refused"


class LLMMalformedResponse(LLMError):
    """The provider answered, but with no choices or an empty message."""

    kind = "malformed response"


class ScriptExhausted(LLMError):
    """A ScriptedModel was asked for more answers than its file holds."""

    kind = "script exhausted"


class ScriptError(ValueError):
    """A script file that cannot be read as documented in ScriptedModel."""


class NoModelConfigured(ValueError):
    """Neither --model/--coder-model/--judge-model nor FORGE_MODEL names a model."""


class MissingCredentials(ValueError):
    """The provider's key is not in the environment (found before anything runs)."""


SCRIPTED_ERRORS: dict[str, type[LLMError]] = {
    "error": LLMError,
    "connection": LLMConnectionError,
    "timeout": LLMTimeout,
    "server": LLMServerError,
    "rate_limited": LLMRateLimited,
    "request": LLMRequestError,
}
"""What a scripted item's `error_kind` raises (a plain LLMError when it names none)."""


# ----------------------------------------------------------------- responses


class LLMResult(LLMResponse):
    """An `LLMResponse` with what the implementations here know besides."""

    attempts: int = 1
    """HTTP attempts made, retries included (a scripted answer counts as one)."""
    cost_known: bool = True
    """False when litellm has no price for the model, so `cost_usd` is 0.0 by ignorance."""
    call_id: int | None = None
    """The `llm_call` row that recorded this call (set by RecordingModel)."""


def estimate_tokens(text: str) -> int:
    return len(text) // 4


# ------------------------------------------------------------------ scripted


class ScriptedModel:
    """Replays answers from a JSON file, in order, one per `complete` call.

    The file is a JSON list. Each item is either a string (an answer for any role) or an object:

        {"role": "coder" | "judge",     # optional: only a model built for that role takes it
         "text": "...",                 # the answer; or instead:
         "error": "...",                # raise LLMError with this message (tests error paths)
         "error_kind": "connection",    # optional, with "error": raise that LLMError subclass
                                        # (`SCRIPTED_ERRORS`: connection, timeout, server,
                                        # rate_limited, request), e.g. to test retries
         "cost_usd": 0.0,               # optional: reported cost (tests dollar budgets)
         "delay_s": 0.0}                # optional: seconds the call takes (tests Ctrl-C)

    Coder and Judge can share one file: `ScriptedModel(path, role="coder")` replays the items
    tagged `coder` (and untagged ones) in order with its own cursor, skipping those tagged
    `judge`; a model built without a role replays every item. An untagged item is thus in every
    role's sequence: in a shared file, tag them all. An empty or blank "text" raises
    `LLMMalformedResponse`, as a provider's empty message does. Prompt tokens are estimated as
    the messages' length // 4, completion tokens as the answer's length // 4; cost is 0.0 unless
    the item says otherwise. Asking for more answers than there are raises `ScriptExhausted`.
    `fast_forward(n)` skips the first n answers (`resume_model` uses it when a run resumes).
    """

    def __init__(self, path: str | Path, role: str | None = None) -> None:
        self.path = Path(path)
        self.role = role
        self.model_id = f"{SCRIPTED_PREFIX}{path}"
        self._entries = [
            e for e in _read_script(self.path) if role is None or e.get("role") in (None, role)
        ]
        self._next = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        return len(self._entries) - self._next

    def fast_forward(self, n: int) -> None:
        with self._lock:
            self._next = min(len(self._entries), self._next + n)

    def complete(self, messages: list[Message], options: LLMOptions) -> LLMResult:
        with self._lock:
            if self._next >= len(self._entries):
                who = f" for role {self.role}" if self.role else ""
                raise ScriptExhausted(
                    f"{self.model_id}: all {len(self._entries)} scripted answers{who} are used up",
                    model=self.model_id,
                )
            entry = self._entries[self._next]
            self._next += 1
        time.sleep(entry.get("delay_s", 0.0))
        if "error" in entry:
            raise SCRIPTED_ERRORS[entry.get("error_kind", "error")](
                f"{self.model_id}: scripted error: {entry['error']}",
                model=self.model_id,
                attempts=1,
            )
        text = entry["text"]
        if not text.strip():
            raise LLMMalformedResponse(
                f"{self.model_id}: malformed response: the scripted answer is empty",
                model=self.model_id,
                attempts=1,
            )
        return LLMResult(
            text=text,
            model=self.model_id,
            prompt_tokens=estimate_tokens("".join(m.content for m in messages)),
            completion_tokens=estimate_tokens(text),
            cost_usd=float(entry.get("cost_usd", 0.0)),
            latency_s=0.0,
        )


def _read_script(path: Path) -> list[dict]:
    if not path.is_file():
        raise ScriptError(f"script file '{path}' does not exist (--model scripted:FILE)")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScriptError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (expected a JSON list of answers)"
        ) from exc
    if not isinstance(items, list):
        raise ScriptError(f"{path}: expected a JSON list of answers, got {type(items).__name__}")
    entries = []
    for i, item in enumerate(items):
        entry = {"text": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or ("text" in entry) == ("error" in entry):
            raise ScriptError(
                f"{path}: item {i} must be a string or an object with 'text' or 'error'"
            )
        if entry.get("role") not in (None, "coder", "judge"):
            raise ScriptError(
                f"{path}: item {i} has role {entry['role']!r}; use 'coder' or 'judge'"
            )
        if not isinstance(entry.get("text", entry.get("error")), str):
            raise ScriptError(f"{path}: item {i}: 'text' and 'error' must be strings")
        if entry.get("error_kind", "error") not in SCRIPTED_ERRORS or (
            "error_kind" in entry and "error" not in entry
        ):
            raise ScriptError(
                f"{path}: item {i}: 'error_kind' goes with 'error' and is one of "
                f"{', '.join(SCRIPTED_ERRORS)}"
            )
        for number in ("cost_usd", "delay_s"):
            if not isinstance(entry.get(number, 0.0), int | float):
                raise ScriptError(f"{path}: item {i}: '{number}' must be a number")
        entries.append(entry)
    return entries


# ------------------------------------------------------------------- litellm


@cache
def _litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    install_log_redaction()  # litellm logs raw requests and responses through its own handlers
    return litellm


@cache
def _permanent_errors() -> tuple[type[BaseException], ...]:
    """litellm's exceptions for requests that fail the same way however often they are sent
    (UnsupportedParamsError and ContextWindowExceededError are BadRequestErrors)."""
    lm = _litellm()
    return (lm.AuthenticationError, lm.PermissionDeniedError, lm.BadRequestError, lm.NotFoundError)


def _never_sent(exc: BaseException) -> bool:
    """True when the OpenAI SDK refused to send the request (no key, a bad client setting):
    litellm reports that as a 500, but there was no server to retry."""
    import openai

    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, openai.OpenAIError) and not isinstance(cause, openai.APIError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _transient_kind(exc: BaseException) -> type[LLMTransientError] | None:
    """Our class for a litellm error worth retrying, None for one that cannot succeed."""
    if isinstance(exc, _permanent_errors()) or _never_sent(exc):
        return None
    return next((ours for cls, ours in _transient_errors() if isinstance(exc, cls)), None)


@cache
def _transient_errors() -> tuple[tuple[type[BaseException], type[LLMTransientError]], ...]:
    """litellm's retryable exceptions and ours, most specific first."""
    lm = _litellm()
    return (
        (lm.RateLimitError, LLMRateLimited),
        (lm.Timeout, LLMTimeout),
        (lm.InternalServerError, LLMServerError),
        (lm.ServiceUnavailableError, LLMServerError),
        (lm.BadGatewayError, LLMServerError),
        (lm.APIConnectionError, LLMConnectionError),
    )


@cache
def _supported_params(model_id: str) -> frozenset[str] | None:
    lm = _litellm()
    try:
        model, provider, _, _ = lm.get_llm_provider(model=model_id)
    except lm.BadRequestError:  # a model string litellm cannot place: the call will say so
        return None
    params = lm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    return frozenset(params) if params is not None else None


def missing_credentials(model_id: str) -> list[str]:
    """The key variables litellm's `validate_environment` finds missing for this model's
    provider ([] when it needs none, or only settings with defaults: see SECRET_VARIABLE)."""
    missing = _litellm().validate_environment(model=model_id)["missing_keys"]
    return missing if any(SECRET_VARIABLE.search(name) for name in missing) else []


def check_credentials(model_id: str, api_base: str | None) -> None:
    """Raise MissingCredentials, naming the variables, when the provider's key is not set.
    A scripted model and a server given by `api_base` need none."""
    if model_id.startswith(SCRIPTED_PREFIX) or api_base is not None:
        return
    missing = missing_credentials(model_id)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingCredentials(
            f"{model_id}: {', '.join(missing)} {verb} not set (litellm's check of the "
            "provider's credentials): export the key, or pass --api-base URL for a local "
            "OpenAI-compatible server"
        )


class LiteLLMModel:
    """Any provider litellm knows, by model string."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.stop = threading.Event()
        """Once set (Ctrl-C), a failed attempt is not retried: a retry is a new, paid call."""

    def complete(self, messages: list[Message], options: LLMOptions) -> LLMResult:
        lm = _litellm()
        import openai  # a litellm dependency: the base class of every provider error it raises

        payload = [m.model_dump() for m in messages]
        params = self.request_params(options)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = lm.completion(
                    model=self.model_id,
                    messages=payload,
                    timeout=options.timeout_s,
                    num_retries=0,
                    max_retries=0,
                    drop_params=True,
                    **params,
                )
            except openai.OpenAIError as exc:
                status = getattr(exc, "status_code", None)
                ours = _transient_kind(exc)
                if ours is None:
                    raise LLMRequestError.after(self.model_id, attempt, status, str(exc)) from exc
                if attempt > options.retries or self.stop.is_set():
                    raise ours.after(self.model_id, attempt, status, str(exc)) from exc
                delay = (
                    options.backoff_s * 2 ** (attempt - 1) * (1 + BACKOFF_JITTER * random.random())
                )
                log.warning(
                    "%s: %s (attempt %d of %d), retrying in %.2fs",
                    self.model_id,
                    ours.kind,
                    attempt,
                    options.retries + 1,
                    delay,
                )
                if self.stop.wait(delay):
                    raise ours.after(self.model_id, attempt, status, str(exc)) from exc
                continue
            return self._result(response, attempt, time.monotonic() - started)

    def request_params(self, options: LLMOptions) -> dict[str, object]:
        """The keyword arguments of `litellm.completion` besides model, messages and retries:
        the sampling options that are set and that litellm lists for this model, the server,
        and a placeholder key for a server given without one."""
        wanted = {
            k: getattr(options, k) for k in SAMPLING_OPTIONS if getattr(options, k) is not None
        }
        supported = self.supported_params()
        if supported is not None:
            for name in sorted(wanted.keys() - supported):
                log.info("%s: not sending %s (the model does not take it)", self.model_id, name)
                del wanted[name]
        if options.api_base is not None:
            wanted["api_base"] = options.api_base
            if missing_credentials(self.model_id):
                wanted["api_key"] = LOCAL_SERVER_KEY
        return wanted

    def supported_params(self) -> frozenset[str] | None:
        """The OpenAI-style parameters litellm says this model takes (None: it cannot tell)."""
        return _supported_params(self.model_id)

    def priced(self) -> bool:
        """Whether litellm's price map has this model (else its cost is unknown)."""
        lm = _litellm()
        try:
            info = lm.get_model_info(model=self.model_id)
        except lm.exceptions.ModelNotMappedError:
            return False
        return bool(info.get("input_cost_per_token") or info.get("output_cost_per_token"))

    def _result(self, response, attempts: int, latency: float) -> LLMResult:  # noqa: ANN001 (litellm.ModelResponse)
        choices = response.choices or []
        if not choices:
            raise LLMMalformedResponse.after(
                self.model_id, attempts, 200, "the response has no choices"
            )
        text = choices[0].message.content
        if not text or not text.strip():
            finish = choices[0].finish_reason
            raise LLMMalformedResponse.after(
                self.model_id,
                attempts,
                200,
                f"the response's message is empty (finish_reason={finish})",
            )
        usage = response.usage
        cost, known = self._cost(response)
        return LLMResult(
            text=text,
            model=response.model or self.model_id,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=cost,
            latency_s=latency,
            attempts=attempts,
            cost_known=known,
        )

    def _cost(self, response) -> tuple[float, bool]:  # noqa: ANN001
        lm = _litellm()
        try:
            return float(lm.completion_cost(completion_response=response)), True
        except lm.exceptions.ModelNotMappedError:
            log.debug("%s: no price in litellm's map; cost recorded as 0.0", self.model_id)
            return 0.0, False


# ----------------------------------------------------------------- recording


class RecordingModel:
    """Wraps any LLM and records every call (messages, answer, tokens, cost, latency, error)
    with `RunStore.record_llm_call`, then refreshes the run's totals.

    The call's place in the run comes from the wrapper: `bind(trajectory=, round=,
    candidate_id=)` returns a wrapper for one step (cheap; safe to use one per thread). The
    returned `LLMResult.call_id` is the row id, for `RunStore.link_llm_call` once the answer
    has become a candidate. An `LLMError` is recorded, its `call_id` set, and re-raised.
    """

    def __init__(
        self,
        inner: LLM,
        store: RunStore,
        run_id: int,
        role: str,
        *,
        trajectory: int = 0,
        round: int = 0,
        candidate_id: int | None = None,
    ) -> None:
        self.inner = inner
        self.store = store
        self.run_id = run_id
        self.role = role
        self.trajectory = trajectory
        self.round = round
        self.candidate_id = candidate_id

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def bind(
        self, *, trajectory: int, round: int, candidate_id: int | None = None
    ) -> RecordingModel:
        return RecordingModel(
            self.inner,
            self.store,
            self.run_id,
            self.role,
            trajectory=trajectory,
            round=round,
            candidate_id=candidate_id,
        )

    def _record(self, messages: list[Message], latency: float, **fields: object) -> int:
        call_id = self.store.record_llm_call(
            run_id=self.run_id,
            role=self.role,
            messages=messages,
            latency_s=latency,
            trajectory=self.trajectory,
            round=self.round,
            candidate_id=self.candidate_id,
            **fields,  # type: ignore[arg-type]
        )
        self.store.update_run_totals(self.run_id)
        return call_id

    def complete(self, messages: list[Message], options: LLMOptions) -> LLMResult:
        started = time.monotonic()
        try:
            response = self.inner.complete(messages, options)
        except LLMError as exc:
            exc.call_id = self._record(
                messages,
                time.monotonic() - started,
                model=self.model_id,
                response_text="",
                prompt_tokens=0,
                completion_tokens=0,
                cost_usd=0.0,
                error=f"{type(exc).__name__}: {exc}",
                attempts=exc.attempts,
            )
            raise
        attempts = response.attempts if isinstance(response, LLMResult) else 1
        call_id = self._record(
            messages,
            response.latency_s or time.monotonic() - started,
            model=self.model_id,
            response_text=response.text,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            cost_usd=response.cost_usd,
            attempts=attempts,
        )
        extra = {"attempts": attempts, "call_id": call_id}
        if isinstance(response, LLMResult):
            return response.model_copy(update=extra)
        return LLMResult(**response.model_dump(), **extra)


# ------------------------------------------------------------------ choosing


def get_model(name: str, role: str | None = None) -> LLM:
    """`scripted:FILE` -> ScriptedModel (taking the items for `role`), else LiteLLMModel."""
    if name.startswith(SCRIPTED_PREFIX):
        return ScriptedModel(name[len(SCRIPTED_PREFIX) :], role=role)
    return LiteLLMModel(name)


def resolve_models(
    model: str | None = None,
    coder_model: str | None = None,
    judge_model: str | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[str, str]:
    """(coder, judge) model names: `--model` sets both, `--coder-model`/`--judge-model`
    override it, `FORGE_MODEL` is the default for both."""
    env = os.environ if environ is None else environ
    base = model or env.get(MODEL_ENV) or None
    coder = coder_model or base
    judge = judge_model or base
    if coder and judge:
        return coder, judge
    missing = " and ".join(n for n, v in (("coder", coder), ("judge", judge)) if not v)
    keys = ", ".join(PROVIDER_KEY_VARS)
    raise NoModelConfigured(
        f"no LLM model configured for the {missing}: pass --model (or --coder-model/--judge-model) "
        f"or set {MODEL_ENV} (e.g. openai/gpt-4o), with the provider's key in the environment "
        f"({keys}, ...); --model scripted:FILE replays answers from a file"
    )


def _unwrapped(model: LLM) -> LLM:
    return model.inner if isinstance(model, RecordingModel) else model


def cost_known(model: LLM) -> bool:
    """Whether the model's calls report what they cost: False for a litellm model without a
    price in litellm's map (its cost shows as unknown and a dollar budget cannot stop it)."""
    inner = _unwrapped(model)
    return inner.priced() if isinstance(inner, LiteLLMModel) else True


def stop_retries_on(model: LLM, event: threading.Event) -> None:
    """Make a litellm model stop retrying once `event` is set (the loop's Ctrl-C)."""
    inner = _unwrapped(model)
    if isinstance(inner, LiteLLMModel):
        inner.stop = event


def resume_model(model: LLM, store: RunStore, run_id: int, role: str) -> None:
    """Before resuming a run: a scripted model skips the answers the run already consumed
    (`RunStore.consumed_calls`), so nothing is replayed twice. Other models keep no state."""
    inner = _unwrapped(model)
    if isinstance(inner, ScriptedModel):
        inner.fast_forward(store.consumed_calls(run_id, role))
