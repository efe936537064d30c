"""The example's planning path: a message that asks for several things, served step by step through the graph's nodes.

The router recognises a multi-step message (:mod:`agentgraph.routing.steps`)
and sends it here. The loop engine's planner (:func:`~agentgraph.nodes.loop.create_planner`,
prompt ``support_plan``) has the LLM write the plan once, each step one of the
graph's capabilities (:data:`CAPABILITIES`) with its arguments, e.g.
``cancel_order order_id=48213``. :func:`run_step` turns a step into the state a
single request of that intent has after the router and the extractor: its
arguments validated as a :class:`~agentgraph.graphs.customer_support.ticket.SupportTicket`
against the customer's own message (a plan cannot aim a tool at an order the
customer did not name), and the consent the router read in the customer's
words for that write, and nothing else: a step the customer did not ask for
runs without consent, so the guarded tools refuse it. The step then runs
through the same nodes as a single request (the tool call, the read tools or
the consequence modeler with its approvals and idempotency keys, the
knowledge retrieval and pruner, the escalation node), and
:func:`observe_step` turns its reply into an observation the SLM evaluator
judges: ``continue`` runs the next step, ``replan`` and ``escalate`` call the
LLM again, ``done`` ends the plan. :func:`summarize` sums up what was done as
one reply. With no LLM configured the planner hands the message to a person,
and the ticket lists the requests the router recognised.

Example:
    >>> from agentgraph.graphs.customer_support.planning import parse_step
    >>> step = parse_step("cancel_order order_id=48213", message="cancel 48213 and tell me when 10001 arrives")
    >>> step.intent, step.ticket.order_id
    ('cancel_order', '48213')
    >>> parse_step("cancel_order order_id=99999", message="cancel 48213 please")
    Traceback (most recent call last):
      ...
    agentgraph.graphs.customer_support.planning.PlanStepError: cancel_order order_id=99999: order_id: Value error, '99999' does not occur in the message; copy it from the message or use null
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.messages import ToolMessage
from pydantic import BaseModel, ValidationError

from agentgraph.errors import AgentGraphError
from agentgraph.graphs.customer_support.replies import answer
from agentgraph.graphs.customer_support.routes import (
    ACTION_PHRASES,
    ORDER_VERBS,
    ROUTES,
    STEP_POLICY,
    TOOL_OF_INTENT,
    Route,
)
from agentgraph.graphs.customer_support.state import CustomerSupportState, SupportReply
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.nodes.loop import Observation
from agentgraph.routing.steps import RecognisedStep


def _capability(intent: str) -> str:
    tool = TOOL_OF_INTENT.get(intent)
    arguments = " order_id=<number>" if tool in ORDER_VERBS else ""
    if tool == "get_invoice":
        arguments += " invoice_id=<number, if the customer gave one>"
    if tool == "issue_refund":
        arguments += " refund_amount=<amount, if the customer gave one>"
    return f"{arguments.strip() + ': ' if arguments else ''}{ACTION_PHRASES[intent].format(it='the order')}"


CAPABILITIES: dict[str, str] = {intent: _capability(intent) for intent in ROUTES}
"""What the planner may put in a step: each intent the graph serves, its arguments and what it does."""

_STEP = re.compile(r"^\s*(?P<intent>[a-z_]+)\b(?P<arguments>.*)$")
_ARGUMENT = re.compile(r"(?P<key>\w+)\s*=\s*(?P<value>\"[^\"]*\"|'[^']*'|[^\s,]+)")


class PlanStepError(AgentGraphError, ValueError):
    """A plan step that is not one of the graph's capabilities with valid arguments."""


class PlanStep(BaseModel):
    """One step of a plan, as the graph runs it."""

    text: str
    intent: str
    ticket: SupportTicket

    @property
    def route(self) -> Route:
        return ROUTES[self.intent]


def parse_step(text: str, *, message: str) -> PlanStep:
    """``text`` (``intent key=value ...``) as a step, its arguments validated against the customer's ``message``;
    :class:`PlanStepError` says what is wrong with it."""
    match = _STEP.match(text)
    if match is None or match["intent"] not in ROUTES:
        raise PlanStepError(f"{text}: not one of the capabilities {', '.join(ROUTES)}")
    arguments = {m["key"]: m["value"].strip("\"'") for m in _ARGUMENT.finditer(match["arguments"])}
    if unknown := set(arguments) - set(SupportTicket.model_fields):
        raise PlanStepError(f"{text}: no argument {', '.join(sorted(unknown))}")
    try:
        ticket = SupportTicket.model_validate(arguments, context={"source_text": message})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PlanStepError(f"{text}: {problems}") from None
    return PlanStep(text=text, intent=match["intent"], ticket=ticket)


def begin_plan(state: CustomerSupportState) -> dict[str, Any]:
    """A fresh plan for this turn's message (a thread's earlier plan is done with)."""
    return {
        "goal": state["request"], "plan": [], "step_index": 0, "observations": [], "verdict": None,
        "status": "running", "answer": None, "iterations": 0, "llm_calls": 0, "slm_calls": 0, "step_replies": [],
        "handoff": None, "plan_step_error": None,
    }  # fmt: skip


def run_step(state: CustomerSupportState) -> dict[str, Any]:
    """The state a single request of the next step's intent has after the router and the extractor."""
    text = state["plan"][state["step_index"]]
    try:
        step = parse_step(text, message=state["goal"])
    except PlanStepError as exc:
        return {"plan_step_error": str(exc)}
    recognised = _recognised(step, state.get("steps") or [])
    consent = recognised.consent if recognised is not None else None
    return {
        "plan_step_error": None, "intent": step.intent, "route": step.route, "ticket": step.ticket, "handoff": None,
        "request": recognised.text if recognised is not None else state["goal"], "write_consent": consent,
        "clarification": None, "context": [], "chunks": [],
    }  # fmt: skip


def _recognised(step: PlanStep, recognised: list[RecognisedStep]) -> RecognisedStep | None:
    """The customer's request this step serves: the one the router read with its intent and its order."""
    order = (step.ticket.order_id or "").lstrip("0")
    for candidate in recognised:
        named = {reference.lstrip("#").lstrip("0") for reference in candidate.references}
        if candidate.label == step.intent and (order in named or not (order or named)):
            return candidate
    return None


StepNode = Literal["plan_tool_call", "retrieve", "escalate", "observe_step"]


def step_node_for(state: CustomerSupportState) -> StepNode:
    """Where a step goes: the node a single request of its route goes to after extraction."""
    if state.get("plan_step_error") is not None:
        return "observe_step"
    if state["route"] in ("lookup", "action"):
        return "plan_tool_call"
    return "retrieve" if state["route"] == "knowledge" else "escalate"


def planning(state: Mapping[str, Any]) -> bool:
    """Whether this turn's message is being served as a plan (the nodes a step shares then lead to the evaluator)."""
    return bool(state.get("steps")) and state.get("status") == "running"


def observe_step(state: CustomerSupportState) -> dict[str, Any]:
    """The step's reply, drafted as a single request's would be, as the observation the evaluator judges."""
    step = state["plan"][state["step_index"]]
    if (problem := state.get("plan_step_error")) is not None:
        observation = Observation(step=step, result=f"not a valid step: {problem}", error=True)
        replies = state.get("step_replies", [])
    else:
        reply = answer(state)["draft"].text
        observation = Observation(step=step, result=_observed(state, reply), error=_failed(state))
        # A step run again after a replan says the same thing once; what failed is said too.
        replies = [*dict.fromkeys([*state.get("step_replies", []), reply])]
    return {
        "observations": [*state.get("observations", []), observation], "step_index": state["step_index"] + 1,
        "iterations": state.get("iterations", 0) + 1, "step_replies": replies,
    }  # fmt: skip


def _observed(state: CustomerSupportState, reply: str) -> str:
    """What the evaluator reads of a step: its reply, but for a policy answer which section answered (a policy's
    own wording, "contact us", "a fee applies", reads like a step that needs a person; whether the section
    answers the question is the pruner's judgement, already made)."""
    kept = state.get("context") or []
    if state["route"] == "knowledge" and kept:
        return f"Answered from the policy section {state['chunks'][kept[0].index]['title']!r}."
    return reply


def _failed(state: CustomerSupportState) -> bool:
    """Whether the step did not do what it was planned for: a tool error, a handoff, a question back, no policy."""
    if state.get("handoff") is not None:
        return True
    if state["route"] == "knowledge":
        return not state.get("context")
    if state["route"] == "escalate":
        return False
    last = state["messages"][-1] if state.get("messages") else None
    return not isinstance(last, ToolMessage) or last.status == "error" or last.name == "list_orders"


def summarize(state: CustomerSupportState) -> dict[str, Any]:
    """One reply for the whole message: what each step did, then the planner's answer or the handoff.

    The turn's route and intent go back to the router's (each step had set its own)."""
    turn = {"route": STEP_POLICY.route, "intent": None}
    done = list(state.get("step_replies", []))
    handoff = state.get("handoff")
    if state.get("status") == "handoff" and handoff is not None:
        asked = [step.text for step in state.get("steps") or []]
        rest = (
            f"I have passed the rest of your requests ({'; '.join(asked)}) to a colleague"
            if done
            else (f"I have passed your requests ({'; '.join(asked)}) to a colleague")
        )
        text = " ".join([*done, f"{rest}, who will get back to you. Your ticket is {handoff.ticket_id}."])
        return {**turn, "draft": SupportReply(text=text, handoff_ticket=handoff.ticket_id)}
    if state.get("answer") and not done:
        done.append(state["answer"])
    return {**turn, "draft": SupportReply(text=" ".join(done))}
