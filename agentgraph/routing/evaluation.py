"""How a router does on labelled requests: accuracy, coverage, out-of-scope escalation, the risk-coverage curve.

Example:
    >>> from agentgraph.routing.evaluation import evaluate_router
    >>> from agentgraph.routing.router import Router
    >>> from agentgraph.routing.strategies import RuleStrategy
    >>> router = Router([RuleStrategy({r"\\bwhere\\b": "track_order"})])
    >>> scores = evaluate_router(router, [("where is it?", "track_order"), ("cancel it", "cancel_order")])
    >>> scores.accuracy, scores.coverage, scores.escalations
    (0.5, 0.5, {'no_proposal': 1})
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.calibration import selective_accuracy_at_coverage
from agentgraph.classifier import OUT_OF_SCOPE
from agentgraph.routing.router import Router, RoutingDecision


class RouterEvaluation(BaseModel):
    """How a router does on labelled requests (``__oos__`` marks one that should not be answered as an intent).

    A clarifying question (or an acknowledgement) is not an answer: it counts against coverage and never
    as an error among the answered requests; for an out-of-scope request it counts as not answered.
    """

    in_scope: int
    out_of_scope: int
    accuracy: float | None = Field(description="top label right, gate or not (in-scope requests)")
    coverage: float | None = Field(description="share of in-scope requests answered (neither escalated nor clarified)")
    selective_accuracy: float | None = Field(description="accuracy over the answered in-scope requests")
    oos_escalation_rate: float | None = Field(
        description="share of out-of-scope requests not answered as an intent (escalated, or clarified)"
    )
    clarification_rate: float | None = Field(default=None, description="share of in-scope requests clarified")
    oos_clarification_rate: float | None = Field(default=None, description="share of out-of-scope requests clarified")
    selective_accuracy_at_coverage: dict[str, float] = Field(
        default_factory=dict,
        description="accuracy over the most confident 80/90/95% of in-scope requests (the risk-coverage curve)",
    )
    escalations: dict[str, int] = Field(description="escalations by reason")
    clarifications: dict[str, int] = Field(default_factory=dict, description="questions asked, by kind")
    confusions: list[tuple[str, str, int]] = Field(
        description="most frequent (expected, routed) errors, answered ones only"
    )
    latency_ms_p50: float
    latency_ms_p95: float


def evaluate_router(router: Router, rows: Iterable[tuple[str, str]], *, top_confusions: int = 10) -> RouterEvaluation:
    """Route each ``(text, label)`` one at a time (as in service, each on a new thread) and score the result.

    Accuracy compares the proposing strategy's top label, before the gate, with
    the expected label; an escalated or clarified request counts toward
    coverage, never as an error among the answered ones.
    """
    return score_verdicts(((label, router.decide(text)) for text, label in rows), top_confusions=top_confusions)


def score_verdicts(verdicts: Iterable[tuple[str, RoutingDecision]], *, top_confusions: int = 10) -> RouterEvaluation:
    """The :class:`RouterEvaluation` of ``(expected label, verdict)`` pairs routed already (see :func:`evaluate_router`)."""
    latencies, in_scope, out_of_scope = [], [], []
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    clarified_in_scope, clarified_out_of_scope = [], []
    errors: Counter[tuple[str, str]] = Counter()
    for label, verdict in verdicts:
        latencies.append(verdict.latency_ms)
        served = verdict.label
        if verdict.escalated and verdict.reason is not None:
            reasons[verdict.reason] += 1
        if verdict.clarification is not None:
            kinds[verdict.clarification.kind] += 1
        if label == OUT_OF_SCOPE:
            out_of_scope.append(served is None)
            clarified_out_of_scope.append(verdict.clarified)
            if served is not None:
                errors[(label, served)] += 1
        else:
            confidence = verdict.confidence if verdict.confidence is not None else -math.inf
            in_scope.append((verdict.top_label == label, served is not None, confidence))
            clarified_in_scope.append(verdict.clarified)
            if served is not None and served != label:
                errors[(label, served)] += 1
    correct = np.array([c for c, _, _ in in_scope], dtype=bool)
    accepted = np.array([a for _, a, _ in in_scope], dtype=bool)
    confidences = np.array([p for _, _, p in in_scope], dtype=np.float64)
    return RouterEvaluation(
        in_scope=len(in_scope),
        out_of_scope=len(out_of_scope),
        accuracy=float(correct.mean()) if in_scope else None,
        coverage=float(accepted.mean()) if in_scope else None,
        selective_accuracy=float(correct[accepted].mean()) if accepted.any() else None,
        selective_accuracy_at_coverage={
            f"{coverage:.2f}": selective_accuracy_at_coverage(confidences, correct, coverage)
            for coverage in (0.8, 0.9, 0.95)
        }
        if in_scope
        else {},
        oos_escalation_rate=float(np.mean(out_of_scope)) if out_of_scope else None,
        clarification_rate=float(np.mean(clarified_in_scope)) if in_scope else None,
        oos_clarification_rate=float(np.mean(clarified_out_of_scope)) if out_of_scope else None,
        escalations=dict(reasons),
        clarifications=dict(kinds),
        confusions=[(expected, routed, n) for (expected, routed), n in errors.most_common(top_confusions)],
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else 0.0,
        latency_ms_p95=float(np.percentile(latencies, 95)) if latencies else 0.0,
    )
