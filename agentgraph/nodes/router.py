"""The router: send each request down one route, or escalate it when unsure or out of scope.

Three small-model strategies, alone or chained in one node (tried in order):

- :class:`RuleStrategy`: regular expressions or predicates mapped to labels;
  deterministic, confidence 1.0, abstains when nothing matches.
- :class:`ClassifierStrategy`: the trained embedding classifier
  (:class:`~agentgraph.classifier.IntentClassifier`), calibrated, with its
  out-of-scope detector.
- :class:`SLMStrategy`: a constrained choice by the SLM among labels described
  by their decision boundaries (prompt ``router``), its label probability
  temperature-calibrated on a dev set with :meth:`SLMStrategy.fit`.

A proposal is accepted when it is in scope and its calibrated confidence
reaches the gate (:class:`ConfidenceGate`: per-route or per-label thresholds,
else the threshold the strategy fitted on its dev set). A below-gate proposal
falls through to the next strategy; an out-of-scope verdict, or no accepted
proposal at all, sends the request to the escalation route. Labels map to
routes through ``routes`` (27 intents can share 4 paths); the label itself goes
into the state as ``intent``.

The teacher, :class:`LLMStrategy` (the frontier LLM choosing a label through
``with_structured_output``), takes part by the node's mode
(:mod:`agentgraph.modes`): in ``student`` mode (the default) it never routes;
in ``auto`` mode it routes what the strategies leave below the gate (an
out-of-scope verdict still escalates), and its recorded calls are the next
training data; in ``teacher`` mode it routes alone. A teacher that fails, or is
missing, escalates the request instead. With a
:class:`~agentgraph.shadow.ShadowEvaluator`, a sample of the routes the
strategies accepted is also put to the teacher in the background.

With ``acts``, ``writes`` and ``clarification`` the router reads real traffic
as well as clean requests (:mod:`agentgraph.routing.request_policy`): it asks a
short question instead of guessing (a bare order number, a fragment, labels
too close to call), acknowledges what asks for nothing (statements, refusals,
thanks), keeps writes to messages that ask for them
(:mod:`agentgraph.write_safety`), and reads the next message on the thread
as the answer to its question.

The node emits ``Command(goto=route)``, or a plain update for a conditional
edge with :func:`route_of`. Its :class:`~agentgraph.records.decisions.Decision` (input,
route, confidence, strategy, latency, escalated, model, and the mode in its
metadata) goes into the state and into ``decision_log``.
:func:`create_escalation_node` is the node to escalate to: the LLM, or a
:class:`~agentgraph.llm.HumanHandoff` when there is none.

Example:
    >>> from langgraph.graph import END, START, StateGraph
    >>> from agentgraph.classifier import IntentClassifier
    >>> from agentgraph.graphs.customer_support import support_router_path
    >>> from agentgraph.nodes.router import (ClassifierStrategy, RouterState, RuleStrategy, create_escalation_node,
    ...                                      create_router)
    >>> router = create_router(
    ...     [RuleStrategy({r"\\b(human|person)\\b": "contact_human_agent"}),
    ...      ClassifierStrategy(IntentClassifier.load(support_router_path()))],
    ...     routes={"track_order": "lookup", "cancel_order": "action", "contact_human_agent": "escalate"},
    ...     default_route="knowledge",
    ... )
    >>> builder = StateGraph(RouterState)
    >>> for name in ("lookup", "action", "knowledge"):
    ...     _ = builder.add_node(name, lambda state: {}).add_edge(name, END)
    >>> _ = builder.add_node("router", router, destinations=("lookup", "action", "knowledge", "escalate"))
    >>> _ = builder.add_node("escalate", create_escalation_node(None)).add_edge("escalate", END)
    >>> graph = builder.add_edge(START, "router").compile()
    >>> result = graph.invoke({"text": "I want to cancel order 12345"})
    >>> result["route"], result["intent"], result["decisions"][0].strategy
    ('action', 'cancel_order', 'classifier')
    >>> result = graph.invoke({"text": "What's the weather in Lisbon tomorrow?"})
    >>> result["route"], result["escalation_reason"], result["escalation"].kind
    ('escalate', 'out_of_scope', 'human_handoff')

    Teacher mode with no LLM configured escalates every request, and says why:

    >>> teacher_mode = create_router(ClassifierStrategy(IntentClassifier.load(support_router_path())),
    ...                              mode="teacher", teacher=None)
    >>> update = teacher_mode({"text": "I want to cancel order 12345"}, {})
    >>> update.goto, update.update["escalation_reason"], update.update["decisions"][0].metadata["mode"]
    ('escalate', 'no_teacher', 'teacher')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage

from agentgraph.acts import ActDetector
from agentgraph.clarification import Clarification, ClarificationPolicy
from agentgraph.errors import ConfigError
from agentgraph.llm import HumanHandoff
from agentgraph.modes import Mode
from agentgraph.nodes.escalation import create_escalation_node
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult, ShadowCheck, mode_in_force
from agentgraph.records.decisions import DecisionLog, DecisionState
from agentgraph.routing.evaluation import RouterEvaluation, evaluate_router, score_verdicts
from agentgraph.routing.router import ESCALATE, EscalationReason, Router, RoutingDecision
from agentgraph.routing.steps import RecognisedStep, StepPolicy
from agentgraph.routing.strategies import (
    ClassifierStrategy,
    ConfidenceGate,
    LLMStrategy,
    RouteProposal,
    RoutingStrategy,
    RuleStrategy,
    SLMStrategy,
    label_probability,
)
from agentgraph.shadow import ShadowEvaluator
from agentgraph.slm.base import tokens_of
from agentgraph.write_safety import WriteConsent, WritePolicy

__all__ = [
    "ESCALATE",
    "ClassifierStrategy",
    "ConfidenceGate",
    "EscalationReason",
    "LLMStrategy",
    "RouteProposal",
    "Router",
    "RouterEvaluation",
    "RouterNode",
    "RouterState",
    "RoutingDecision",
    "RoutingStrategy",
    "RuleStrategy",
    "SLMStrategy",
    "create_escalation_node",
    "create_router",
    "evaluate_router",
    "label_probability",
    "route_of",
    "score_verdicts",
]


class RouterNode(ControlNode):
    """The router's node; ``router`` is its decision logic, for :func:`evaluate_router` and destinations."""

    router: Router


class RouterState(DecisionState, total=False):
    """State keys the router reads (``text``, and ``clarification`` from the last turn) and writes.

    ``request`` is what the route serves: the message, or after a clarifying question the original
    request with the answer. The escalation node adds ``escalation``.
    """

    text: str
    request: str
    route: str
    intent: str | None
    route_confidence: float | None
    escalation_reason: EscalationReason | None
    clarification: Clarification | None
    write_consent: WriteConsent | None
    steps: list[RecognisedStep] | None
    escalation: AIMessage | HumanHandoff


def route_of(state: Mapping[str, Any]) -> str:
    """Conditional-edge function for a router made with ``goto=False``: the route it wrote."""
    return state["route"]


def create_router(
    strategies: RoutingStrategy | Sequence[RoutingStrategy],
    *,
    routes: Mapping[str, str] | None = None,
    default_route: str | None = None,
    gate: ConfidenceGate | None = None,
    escalation_route: str = ESCALATE,
    input_key: str = "text",
    goto: bool = True,
    decision_log: DecisionLog | None = None,
    name: str = "router",
    mode: Mode | None = None,
    teacher: LLMStrategy | None = None,
    llm: BaseChatModel | None = None,
    shadow: ShadowEvaluator | None = None,
    acts: ActDetector | None = None,
    writes: WritePolicy | None = None,
    clarification: ClarificationPolicy | None = None,
    steps: StepPolicy | None = None,
) -> RouterNode:
    """A LangGraph node that routes ``state[input_key]`` (a string or messages) to one route.

    Args:
        strategies: a strategy or several, tried in order (see :class:`Router`).
        routes: ``{label: route}``; route names are the graph's node names.
        default_route: the route of a label missing from ``routes`` (None: the label itself).
        gate: per-label or per-route thresholds (default: each strategy's fitted one).
        escalation_route: the node that handles escalations (see :func:`create_escalation_node`).
        goto: return ``Command(goto=route)``; with False, a plain update to pair with :func:`route_of`.
        decision_log: where each :class:`~agentgraph.records.decisions.Decision` is also written.
        name: the node name in decision records.
        mode: ``student`` (the strategies alone, below the gate escalates), ``auto`` (the teacher routes
            what the strategies leave below the gate) or ``teacher`` (the teacher alone); see :class:`Router`.
        teacher: the LLM strategy of ``auto`` and ``teacher``, and the teacher of ``shadow``.
        llm: a chat model to be that teacher, choosing among the labels of ``routes``: the same as
            ``teacher=LLMStrategy(llm, list(routes))`` (give one or the other).
        shadow: compares a sample of the strategies' accepted routes with the teacher's, in the background
            (decisions of kind ``shadow`` in ``decision_log``).
        acts: reads what the message does (:class:`~agentgraph.acts.ActDetector`): statements, refusals
            and greetings are acknowledged, never served as requests.
        writes: the labels whose routes write, and the evidence a write needs to run unasked
            (:mod:`agentgraph.write_safety`); the node writes the customer's consent to ``write_consent``.
        clarification: the questions the router asks instead of guessing (:mod:`agentgraph.clarification`);
            their route is ``clarification.route``. The question asked is kept under ``clarification``
            (with a checkpointer, across turns), and the thread's next message is read as its answer.
        steps: recognise a message that asks for several things (:mod:`agentgraph.routing.steps`): it goes to
            ``steps.route`` with each request read under ``steps``.

    Writes ``route``, ``intent`` (the label; None when escalated or clarified), ``request``, ``route_confidence``,
    ``escalation_reason``, ``clarification``, ``write_consent``, ``steps`` (None for one request) and one record under ``decisions``
    (its ``metadata["mode"]`` says the mode, its ``outcome`` whether the request was routed, clarified or escalated).
    Empty input raises :class:`~agentgraph.errors.EmptyInputError` after logging a ``rejected`` record.
    """
    if llm is not None:
        if teacher is not None:
            raise ConfigError("give the router a teacher= or an llm=, not both")
        if not routes:
            raise ConfigError("llm= makes a teacher choosing among the labels of routes=: give routes, or a teacher=")
        teacher = LLMStrategy(llm, list(routes))
    router = Router(
        list(strategies) if isinstance(strategies, Sequence) else [strategies],
        routes=routes, default_route=default_route, gate=gate, escalation_route=escalation_route,
        mode=mode_in_force(name, config=None, mode=mode, default="student"), teacher=teacher, acts=acts, writes=writes, clarification=clarification,
        steps=steps,
    )  # fmt: skip

    def route_request(call: NodeCall) -> NodeResult:
        asked = call.state.get("clarification")
        pending = asked if isinstance(asked, Clarification) else None
        verdict = router.decide(call.value, pending=pending, mode=call.mode)
        result = NodeResult(
            {
                "route": verdict.route,
                "intent": verdict.label,
                "request": verdict.text,
                "route_confidence": verdict.confidence,
                "escalation_reason": verdict.reason,
                "clarification": verdict.clarification,
                "write_consent": verdict.consent,
                "steps": verdict.steps,
            },
            input=verdict.text,
            output={"route": verdict.route, "intent": verdict.label},
            confidence=verdict.confidence,
            strategy=verdict.strategy,
            escalated=verdict.escalated,
            outcome=verdict.reason or verdict.outcome,
            model=verdict.model,
            metadata={
                "truncated": verdict.truncated,
                "input_chars": verdict.input_chars,
                "attempts": [attempt.model_dump() for attempt in verdict.attempts],
                "teacher_error": verdict.teacher_error,
                **({"act": verdict.act.model_dump()} if verdict.act else {}),
                **({"clarification": verdict.clarification.model_dump()} if verdict.clarification else {}),
                **({"write": verdict.write.model_dump()} if verdict.write else {}),
                **({"consent": verdict.consent.how} if verdict.consent else {}),
                **({"steps": [step.model_dump() for step in verdict.steps]} if verdict.steps else {}),
                **(
                    {"answers": pending.question}
                    if pending is not None and verdict.outcome in ("clarified_answer", "declined")
                    else {}
                ),
            },
            goto=verdict.route if goto else None,
            **tokens_of(attempt.usage for attempt in verdict.attempts),
        )
        if (
            teacher is not None
            and verdict.label is not None
            and verdict.strategy not in (teacher.name, "clarification")
        ):
            result.shadow = ShadowCheck(
                verdict.label, lambda shadow_config: teacher.propose(verdict.text, shadow_config).label, teacher.model
            )
        return result

    labels = [*router.routes, *([default_route] if default_route else [])]
    node = RouterNode(
        route_request, name=name, kind="route", input_key=input_key, what="request", decision_log=decision_log, mode=mode,
        default_mode="student", shadow=shadow, destinations=router.destinations(labels) if goto else (),
    )  # fmt: skip
    node.router = router  # the decision logic, for evaluation (evaluate_router) and destinations of other labels
    return node
