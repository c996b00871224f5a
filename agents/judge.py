"""The Judge: reads the evaluator's evidence on one candidate and returns a `JudgePlan`.

The Judge's prompts of one trajectory form one conversation (`Conversation`): its first turn
states the rules, the answer format, the operator and the target GPU; later turns refer to them
and show each new candidate as a diff against the one before when that is shorter. After
`max_turns` turns a fresh conversation starts, so that prompts stay bounded.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field

from pydantic import ValidationError

from forge import prompts
from forge.agents import techniques
from forge.agents.coder import Attempt, PromptContext
from forge.agents.configs import ConfigTrial
from forge.agents.errors import FormatError, InvalidPlan
from forge.agents.interfaces import JudgePlan, Message
from forge.evaluator.result import EvalResult

JSON_FENCE = re.compile(r"```(?:json)?[^\n]*\n(.*?)```", re.DOTALL)
DIFF_SHARE = 0.6
"""A later turn shows the candidate as a diff when the diff is at most this share of the code."""
EXAMPLE_PLAN = JudgePlan(
    diagnosis="At 41% of the roofline on `large`: each program loads its row twice (max pass, "
    "then sum pass) and dram throughput is 45% of peak.",
    bottleneck="memory",
    plan="Keep the row in registers between the max and the sum passes so it is read once.",
    expected_gain="`large` from 0.210 ms towards 0.12 ms (1.7x)",
    technique="single-pass",
)
"""What a plan looks like, shown to the Judge with the list of fields."""


def plan_fields(technique: bool = True) -> list[dict[str, object]]:
    """The keys of a plan as the prompts list them: name, whether required, what it holds
    (`technique` only when techniques are offered)."""
    return [
        {"name": name, "required": info.is_required(), "description": info.description or ""}
        for name, info in JudgePlan.model_fields.items()
        if technique or name != "technique"
    ]


def plan_format(technique: bool = True) -> dict[str, object]:
    """What the answer-format partial renders: the fields and an example answer."""
    left_out = set() if technique else {"technique"}
    example = EXAMPLE_PLAN.model_dump(exclude_defaults=True, exclude=left_out)
    return {
        "plan_fields": plan_fields(technique),
        "plan_example": json.dumps(example, indent=1),
    }


def _json_object(text: str) -> str:
    fenced = JSON_FENCE.findall(text)
    if fenced:
        return fenced[-1]
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end < start:
        raise InvalidPlan("no JSON object in the answer", text)
    return text[start : end + 1]


def parse_plan(text: str) -> JudgePlan:
    body = _json_object(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidPlan(
            f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", text
        ) from exc
    try:
        plan = JudgePlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'object'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidPlan(f"the JSON does not match the plan's fields ({problems})", text) from exc
    if not plan.diagnosis.strip() or not plan.plan.strip():
        raise InvalidPlan('"diagnosis" and "plan" must not be empty', text)
    if plan.technique.strip():
        technique = techniques.find(plan.technique)
        if technique is None:
            raise InvalidPlan(
                f'"technique" {plan.technique!r} is not a listed technique: use one of '
                f"{', '.join(techniques.names())}, or leave it empty",
                text,
            )
        plan.technique = technique.name
    return plan


def code_diff(code: str, previous: str, previous_round: int, code_round: int) -> str:
    """A unified diff from `previous` to `code`, or "" when it would not be much shorter than
    the code itself."""
    lines = difflib.unified_diff(
        previous.splitlines(),
        code.splitlines(),
        f"round {previous_round}",
        f"round {code_round}",
        lineterm="",
    )
    diff = "\n".join(lines)
    return diff if diff and len(diff) <= DIFF_SHARE * len(code) else ""


@dataclass
class Conversation:
    """The Judge's conversation in one trajectory: the messages so far and the last candidate
    it was shown (a later turn shows a diff against it)."""

    max_turns: int = 4
    messages: list[Message] = field(default_factory=list)
    turns: int = 0
    code: str = ""
    code_round: int = 0

    def record(self, messages: list[Message], answer: str, code: str, code_round: int) -> None:
        """A turn that got a usable plan: its prompt and answer join the conversation, which
        starts afresh once it holds `max_turns` turns. (A turn without one is left out.)"""
        self.turns += 1
        if self.turns >= self.max_turns:
            self.messages, self.turns, self.code = [], 0, ""
            return
        self.messages = [*messages, Message(role="assistant", content=answer)]
        self.code, self.code_round = code, code_round


class Judge:
    def __init__(self, context: PromptContext, offered: list[techniques.Technique] | None = None):
        """`offered`: the techniques the Judge may name (default: those that apply to the
        context's GPU; [] for none)."""
        self.context = context
        gpu = context.gpu
        self.offered = techniques.applicable(gpu.arch or None if gpu else None)
        if offered is not None:
            self.offered = offered

    def _messages(
        self,
        template: str,
        conversation: Conversation | None,
        code: str,
        code_round: int,
        **ctx: object,
    ) -> list[Message]:
        variables = self.context.variables()
        earlier = conversation.messages if conversation is not None else []
        diff = (
            code_diff(code, conversation.code, conversation.code_round, code_round)
            if earlier
            else ""
        )
        turn = Message(
            role="user",
            content=prompts.render(
                template,
                **variables,
                **ctx,
                code=code,
                code_round=code_round,
                opening=not earlier,
                diff=diff,
            ),
        )
        if earlier:
            return [*earlier, turn]
        system = prompts.render(
            "judge_system", **variables, **plan_format(bool(self.offered)), techniques=self.offered
        )
        return [Message(role="system", content=system), turn]

    def repair(
        self,
        code: str,
        result: EvalResult,
        history: list[Attempt],
        code_round: int,
        conversation: Conversation | None = None,
        round_attempts: list[Attempt] | None = None,
        configs: list[ConfigTrial] | None = None,
    ) -> list[Message]:
        """`round_attempts`: every candidate of `code_round` when there were several;
        `configs`: every config of the candidate's answer when it declared `CONFIGS`."""
        return self._messages(
            "judge_repair",
            conversation,
            code,
            code_round,
            result=result,
            history=history,
            round_attempts=round_attempts or [],
            configs=configs or [],
        )

    def optimize(
        self,
        code: str,
        result: EvalResult,
        history: list[Attempt],
        code_round: int,
        conversation: Conversation | None = None,
        round_attempts: list[Attempt] | None = None,
        configs: list[ConfigTrial] | None = None,
    ) -> list[Message]:
        return self._messages(
            "judge_optimize",
            conversation,
            code,
            code_round,
            result=result,
            history=history,
            round_attempts=round_attempts or [],
            configs=configs or [],
        )

    def reminder(self, error: FormatError) -> Message:
        return Message(
            role="user",
            content=prompts.render(
                "format_reminder_json",
                reason=error.reason,
                plan_fields=plan_fields(bool(self.offered)),
            ),
        )

    parse = staticmethod(parse_plan)
