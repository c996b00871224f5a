"""The Judge: reads the evaluator's evidence on one candidate and returns a `JudgePlan`."""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from forge import prompts
from forge.agents.coder import Attempt, PromptContext
from forge.agents.errors import FormatError, InvalidPlan
from forge.agents.interfaces import JudgePlan, Message
from forge.evaluator.result import EvalResult

JSON_FENCE = re.compile(r"```(?:json)?[^\n]*\n(.*?)```", re.DOTALL)


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
        raise InvalidPlan(f"the JSON does not match the plan schema ({problems})", text) from exc
    if not plan.diagnosis.strip() or not plan.plan.strip():
        raise InvalidPlan('"diagnosis" and "plan" must not be empty', text)
    return plan


class Judge:
    def __init__(self, context: PromptContext):
        self.context = context

    def _messages(self, template: str, **ctx: object) -> list[Message]:
        variables = self.context.variables()
        schema = json.dumps(JudgePlan.model_json_schema()["properties"], indent=1)
        return [
            Message(
                role="system",
                content=prompts.render("judge_system", **variables, plan_schema=schema),
            ),
            Message(role="user", content=prompts.render(template, **variables, **ctx)),
        ]

    def repair(
        self, code: str, result: EvalResult, history: list[Attempt], code_round: int
    ) -> list[Message]:
        return self._messages(
            "judge_repair", code=code, result=result, history=history, code_round=code_round
        )

    def optimize(
        self, code: str, result: EvalResult, history: list[Attempt], code_round: int
    ) -> list[Message]:
        return self._messages(
            "judge_optimize", code=code, result=result, history=history, code_round=code_round
        )

    def reminder(self, error: FormatError) -> Message:
        return Message(
            role="user", content=prompts.render("format_reminder_json", reason=error.reason)
        )

    parse = staticmethod(parse_plan)
