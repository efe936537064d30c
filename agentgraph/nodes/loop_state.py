"""The loop engine's state: the plan, its results as observations, the verdicts, and the labelled observations.

Example:
    >>> from agentgraph.nodes.loop_state import Observation, allowed_verdicts, parse_plan
    >>> parse_plan("1. look up order 10001\\n2. tell the customer when it arrives")
    ['look up order 10001', 'tell the customer when it arrives']
    >>> worked = Observation(step="look up order 10001", result="arrives Friday", error=False)
    >>> allowed_verdicts({"plan": ["a", "b"], "step_index": 1, "observations": [worked]})
    ['continue', 'replan', 'escalate']
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agentgraph.llm import HumanHandoff
from agentgraph.records.decisions import DecisionState

Verdict = Literal["continue", "replan", "done", "escalate"]
Status = Literal["running", "done", "handoff"]

VERDICT_DESCRIPTIONS: dict[str, str] = {
    "continue": "the step worked and the plan has steps left: carry out the next step",
    "done": "the last step worked and the goal is reached: stop",
    "replan": "the step failed or its result breaks the plan: make a new plan",
    "escalate": "you cannot tell: ask a stronger model",
}
"""What each verdict means, as the SLM is shown it."""

_PLAN_STEP = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+(?P<step>\S.*?)\s*$")
DONE_REPLY = re.compile(r"^\s*DONE\s*:?\s*(?P<answer>.*)$", re.IGNORECASE | re.DOTALL)


class ActResult(BaseModel):
    """What the act function returned for one step, or the error it raised."""

    step: str
    output: Any = None
    error: bool = False


class Observation(BaseModel):
    """One step's result as the evaluator and the planner see it."""

    step: str
    result: str
    error: bool = False
    truncated: bool = Field(default=False, description="the result was cut to the evaluator's token budget")


class LoopState(DecisionState, total=False):
    """The keys the loop nodes read and write; pass ``goal`` in."""

    goal: str
    plan: list[str]
    step_index: int
    last_result: ActResult | None
    observations: Annotated[list[Observation], operator.add]
    verdict: Verdict | None
    status: Status
    answer: str | None
    handoff: HumanHandoff | None
    iterations: int
    llm_calls: int
    slm_calls: int


class LabelledObservation(BaseModel):
    """A loop state at one evaluation and the verdict it calls for: a case to measure the evaluator on."""

    goal: str
    plan: list[str]
    done: int = Field(ge=1, description="plan steps carried out; the latest of them is the one observed")
    result: str
    error: bool = False
    verdict: Verdict

    def state(self) -> dict[str, Any]:
        """The :class:`LoopState` the evaluator sees after the ``done``-th step."""
        observation = Observation(step=self.plan[self.done - 1], result=self.result, error=self.error)
        return {"goal": self.goal, "plan": self.plan, "step_index": self.done, "observations": [observation]}


def parse_plan(text: str) -> list[str]:
    """The steps of a numbered or bulleted plan, in order; other lines are ignored."""
    return [match["step"] for line in text.splitlines() if (match := _PLAN_STEP.match(line))]


def allowed_verdicts(state: Mapping[str, Any]) -> list[str]:
    """The verdicts the state leaves sensible after the latest observation (see the module docstring)."""
    if state["observations"][-1].error:
        return ["replan", "escalate"]
    if state.get("step_index", 0) < len(state.get("plan", [])):
        return ["continue", "replan", "escalate"]
    return ["done", "replan", "escalate"]


def handoff_update(state: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """End the loop in a ticket for a person that carries everything done so far."""
    request = {
        "goal": state.get("goal"),
        "plan": state.get("plan", []),
        "observations": [o.model_dump() for o in state.get("observations", [])],
    }
    return {"status": "handoff", "handoff": HumanHandoff(reason=reason, request=request)}
