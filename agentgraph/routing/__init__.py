"""The router's decision logic, without a graph: strategies, the gate, the request policy, the evaluation.

The router node (:func:`agentgraph.nodes.router.create_router`) serves a
:class:`Router` in a graph; distillation trains, gates and checks students
against the same :class:`Router`, so neither imports the other.

Example:
    >>> from agentgraph.routing import Router, RuleStrategy, evaluate_router
    >>> router = Router([RuleStrategy({r"\\brefund\\b": "get_refund"})])
    >>> evaluate_router(router, [("I want a refund", "get_refund"), ("hello", "greeting")]).accuracy
    0.5
"""

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

__all__ = [
    "ESCALATE",
    "ClassifierStrategy",
    "ConfidenceGate",
    "EscalationReason",
    "LLMStrategy",
    "RecognisedStep",
    "RouteProposal",
    "Router",
    "RouterEvaluation",
    "RoutingDecision",
    "RoutingStrategy",
    "RuleStrategy",
    "SLMStrategy",
    "StepPolicy",
    "evaluate_router",
    "label_probability",
    "score_verdicts",
]
