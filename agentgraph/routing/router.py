"""The router's decision logic without a graph: strategies in order, the gate, the request policy, the teacher.

:class:`Router` turns one request into a :class:`RoutingDecision`; :func:`~agentgraph.nodes.router.create_router`
makes a LangGraph node of it, and :func:`~agentgraph.routing.evaluation.evaluate_router` scores it.

Example:
    >>> from agentgraph.routing.router import Router
    >>> from agentgraph.routing.strategies import RuleStrategy
    >>> router = Router([RuleStrategy({r"\\bwhere\\b": "track_order"})], routes={"track_order": "lookup"})
    >>> verdict = router.decide("where is my parcel?")
    >>> verdict.route, verdict.label, verdict.strategy, router.decide("hello").reason
    ('lookup', 'track_order', 'rules', 'no_proposal')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentgraph.acts import NON_REQUESTS, ActDetector, ActVerdict
from agentgraph.clarification import Clarification, ClarificationPolicy
from agentgraph.modes import Mode
from agentgraph.routing.request_policy import ESCALATION, PolicyOutcome, RequestPolicy
from agentgraph.routing.steps import RecognisedStep, StepPolicy, distinct_requests
from agentgraph.routing.strategies import ConfidenceGate, LLMStrategy, RouteProposal, RoutingStrategy
from agentgraph.text import require_text, truncate_to_tokens
from agentgraph.write_safety import WriteConsent, WritePolicy, WriteVerdict, judge_write

logger = logging.getLogger(__name__)

ESCALATE = "escalate"

EscalationReason = Literal[
    "out_of_scope", "below_gate", "no_proposal", "no_teacher", "teacher_failed", "unconfirmed_write"
]


class RoutingDecision(BaseModel):
    """The router's verdict on one request, with every proposal it weighed."""

    text: str = Field(
        description="the request as routed: cleaned, cut to the context budget, and after a clarifying question "
        "the original request with the answer"
    )
    route: str
    label: str | None = Field(description="the label served; None when escalated or clarified")
    confidence: float | None
    strategy: str | None = Field(description="the strategy whose proposal was accepted, or that escalated")
    model: str | None = None
    escalated: bool
    reason: EscalationReason | None = None
    teacher_error: str | None = Field(default=None, description="why the teacher could not answer, when it failed")
    truncated: bool = False
    input_chars: int
    attempts: list[RouteProposal]
    latency_ms: float
    outcome: str = Field(
        default="routed",
        description="routed, escalated, clarified_<kind> (a question asked), declined, clarified_answer",
    )
    act: ActVerdict | None = Field(default=None, description="what the message does, when the router reads acts")
    clarification: Clarification | None = Field(default=None, description="the question asked this turn, if any")
    consent: WriteConsent | None = Field(
        default=None, description="the customer's consent to the write this route makes"
    )
    write: WriteVerdict | None = Field(default=None, description="the write-safety rule's verdict, for a write label")
    steps: list[RecognisedStep] | None = Field(
        default=None, description="the requests of a multi-step message (route: the step policy's), else None"
    )

    @property
    def clarified(self) -> bool:
        """Whether the router answered with a question (or an acknowledgement) instead of a route's answer."""
        return self.clarification is not None

    @property
    def top_label(self) -> str | None:
        """The label served, or else the last proposal's: what the router read, gate or not."""
        return self.label or (self.attempts[-1].label if self.attempts else None)


class Router:
    """Strategies, gate and label-to-route mapping: the decision logic of :func:`create_router`, without a graph.

    Args:
        strategies: tried in order until one proposal is accepted.
        routes: ``{label: route}``; a label not in it routes to ``default_route``, or to itself when that is None.
        gate: the confidence gate (default: each strategy's fitted threshold).
        escalation_route: where out-of-scope and unsure requests go.
        mode: ``student``: the strategies alone; ``auto``: the teacher routes what they leave below the
            gate (out of scope still escalates); ``teacher``: the teacher alone (see :mod:`agentgraph.modes`).
        teacher: the :class:`LLMStrategy` of ``auto`` and ``teacher``. Without one, or when it fails, the
            request escalates (reason ``no_teacher`` in teacher mode, ``teacher_failed``), as in student mode.
        acts, writes, clarification: what the router does with a label once read (a
            :class:`~agentgraph.routing.request_policy.RequestPolicy`): read the message's act, keep writes to
            messages that ask for them (:mod:`agentgraph.write_safety`), and ask instead of guessing
            (:mod:`agentgraph.clarification`). Without them a label is served as read.
        steps: recognise messages that ask for several things and send them to ``steps.route``
            (:mod:`agentgraph.routing.steps`); None: every message is one request.
    """

    def __init__(
        self,
        strategies: Sequence[RoutingStrategy],
        *,
        routes: Mapping[str, str] | None = None,
        default_route: str | None = None,
        gate: ConfidenceGate | None = None,
        escalation_route: str = ESCALATE,
        mode: Mode = "student",
        teacher: LLMStrategy | None = None,
        acts: ActDetector | None = None,
        writes: WritePolicy | None = None,
        clarification: ClarificationPolicy | None = None,
        steps: StepPolicy | None = None,
    ) -> None:
        if not strategies:
            raise ValueError("a router needs at least one strategy")
        self.policy = (
            RequestPolicy(acts=acts, writes=writes, clarification=clarification)
            if acts is not None or writes is not None or clarification is not None
            else None
        )
        self.strategies = list(strategies)
        self.routes = dict(routes or {})
        self.default_route = default_route
        self.gate = gate or ConfidenceGate()
        self.escalation_route = escalation_route
        self.mode = mode
        self.teacher = teacher
        self.steps = steps
        if teacher is None and mode != "student":
            escalates = "every request" if mode == "teacher" else "what its strategies leave below the gate"
            logger.warning("a router in %s mode has no teacher: %s escalates", mode, escalates)

    def route_of_label(self, label: str) -> str:
        return self.routes.get(label, self.default_route or label)

    def destinations(self, labels: Iterable[str]) -> tuple[str, ...]:
        """Every route ``labels`` can reach, the escalation route and the clarification route (for ``add_node(destinations=...)``)."""
        clarify = [self.policy.clarify_route] if self.policy is not None and self.policy.clarify_route else []
        plan = [self.steps.route] if self.steps is not None else []
        routes = [*(self.route_of_label(label) for label in labels), self.escalation_route, *clarify, *plan]
        return tuple(dict.fromkeys(routes))

    def fit_to_budgets(self, text: str, *, mode: Mode | None = None) -> tuple[str, bool]:
        """``text`` cut (at a word boundary, with a logged warning) so that every strategy can read all of it.

        In teacher mode no strategy reads it, and the text stays whole.
        """
        truncated = False
        for strategy in self.strategies if (mode or self.mode) != "teacher" else ():
            if strategy.max_input_tokens is not None:
                text, cut = truncate_to_tokens(
                    text, max_tokens=strategy.max_input_tokens, count_tokens=strategy.count_tokens
                )
                truncated = truncated or cut
        return text, truncated

    def decide(
        self, text: str | None, *, pending: Clarification | None = None, mode: Mode | None = None
    ) -> RoutingDecision:
        """Route one request; :class:`~agentgraph.errors.EmptyInputError` when it holds no text.

        ``pending`` is the question the router asked on this thread last turn: when the message answers
        it, the answer is routed with the question's context. ``mode`` overrides the router's own for this
        request (the node passes the mode in force, see :func:`~agentgraph.nodes.kernel.mode_in_force`).
        """
        started = time.perf_counter()
        mode = mode or self.mode
        cleaned = require_text(text, what="request")
        routed, truncated = self.fit_to_budgets(cleaned, mode=mode)
        # A message answering last turn's question is read as that answer, never as new requests.
        if pending is None and mode != "teacher" and self.steps and (steps := self.recognise_steps(routed)):
            weakest = min(steps, key=lambda step: step.confidence or 0.0)
            return RoutingDecision(
                text=routed, route=self.steps.route, label=None,
                confidence=weakest.confidence, strategy=weakest.strategy, escalated=False, truncated=truncated,
                input_chars=len(cleaned), attempts=[], latency_ms=(time.perf_counter() - started) * 1000,
                outcome="multi_step", steps=steps,
            )  # fmt: skip
        attempts: list[RouteProposal] = []
        accepted: RouteProposal | None = None
        reason: EscalationReason | None = "no_proposal"
        teacher_error: str | None = None
        if mode != "teacher":
            accepted, reason = self._student_verdict(routed, attempts)
        act = self.policy.act_of(routed) if self.policy is not None else None
        outcome = None
        if self.policy is not None and pending is not None:
            outcome = self.policy.answer(pending, routed, best_label=attempts[-1].label if attempts else None, act=act)
        if outcome is None:
            outcome = self._settle(routed, act, accepted, reason, attempts)
        # Out of scope means the label set does not fit the request: the teacher would choose among the same labels.
        if outcome is ESCALATION and (mode == "teacher" or (mode == "auto" and reason != "out_of_scope")):
            accepted, reason, teacher_error = self._teacher_verdict(routed, attempts, reason, mode=mode)
            if accepted is not None:
                outcome = self._settle(routed, act, accepted, reason, attempts)
        fields: dict[str, Any] = {
            "truncated": truncated, "input_chars": len(cleaned), "attempts": attempts, "act": act,
            "outcome": outcome.outcome, "write": outcome.write,
        }  # fmt: skip
        if outcome.label is not None:
            answered = outcome.outcome == "clarified_answer"
            proposal = accepted if accepted is not None and not answered else None
            return RoutingDecision(
                text=outcome.text or routed, route=self.route_of_label(outcome.label), label=outcome.label,
                confidence=proposal.confidence if proposal else None,
                strategy=proposal.strategy if proposal else "clarification", model=proposal.model if proposal else None,
                escalated=False, consent=outcome.consent, latency_ms=(time.perf_counter() - started) * 1000, **fields,
            )  # fmt: skip
        last = attempts[-1] if attempts else None
        if outcome.clarification is not None and self.policy is not None and self.policy.clarify_route is not None:
            return RoutingDecision(
                text=routed, route=self.policy.clarify_route, label=None, confidence=last.confidence if last else None,
                strategy=last.strategy if last else None, model=last.model if last else None, escalated=False,
                clarification=outcome.clarification, latency_ms=(time.perf_counter() - started) * 1000, **fields,
            )  # fmt: skip
        return RoutingDecision(
            text=routed, route=self.escalation_route, label=None, confidence=last.confidence if last else None,
            strategy=last.strategy if last else None, model=last.model if last else None, escalated=True,
            reason="unconfirmed_write" if outcome.write is not None else reason or "below_gate",
            teacher_error=teacher_error, latency_ms=(time.perf_counter() - started) * 1000, **fields,
        )  # fmt: skip

    def recognise_steps(self, text: str) -> list[RecognisedStep] | None:
        """The requests of a message that asks for several things, or None when it is one request
        (see :mod:`agentgraph.routing.steps`)."""
        if self.steps is None or not 2 <= len(clauses := self.steps.clauses(text)) <= self.steps.max_steps:
            return None
        steps: list[RecognisedStep] = []
        for clause in clauses:
            proposal, _ = self._student_verdict(clause, [])
            if proposal is None:
                return None
            act = self.policy.act_of(clause) if self.policy is not None else None
            if act is not None and act.act in NON_REQUESTS and act.confidence >= self._act_gate:
                return None
            references = self.policy.references(clause) if self.policy is not None else []
            step = RecognisedStep(
                text=clause, label=proposal.label, route=self.route_of_label(proposal.label),
                confidence=proposal.confidence, strategy=proposal.strategy, references=references,
            )  # fmt: skip
            steps.append(self._with_consent(step, text, act))
        return steps if distinct_requests(steps) >= 2 else None

    @property
    def _act_gate(self) -> float:
        writes = self.policy.writes if self.policy is not None else None
        return writes.act_gate if writes is not None else 0.0

    def _with_consent(self, step: RecognisedStep, message: str, act: ActVerdict | None) -> RecognisedStep:
        """``step`` with the write rule's verdict and the customer's consent, for a write label."""
        writes = self.policy.writes if self.policy is not None else None
        if writes is None or not writes.writes(step.label) or self.policy is None:
            return step
        verdict = judge_write(writes, step.text, confidence=step.confidence, act=act, references=step.references)
        if verdict.judgement == "fragment":  # "cancel 48213" is short; the whole message shows whether it asks
            message_act = self.policy.act_of(message)
            verdict = judge_write(
                writes, message, confidence=step.confidence, act=message_act, references=step.references
            )
        consent = (
            WriteConsent(label=step.label, how="requested", request=step.text) if verdict.judgement == "write" else None
        )
        return step.model_copy(update={"write": verdict, "consent": consent})

    def _settle(
        self,
        text: str,
        act: ActVerdict | None,
        accepted: RouteProposal | None,
        reason: EscalationReason | None,
        attempts: Sequence[RouteProposal],
    ) -> PolicyOutcome:
        """The route the policy makes of the router's verdict (without a policy: the accepted label, else escalation)."""
        if self.policy is None:
            return PolicyOutcome(label=accepted.label, text=text) if accepted is not None else ESCALATION
        last = accepted or (attempts[-1] if attempts else None)
        return self.policy.decide(
            text, act=act, label=last.label if last else None, confidence=last.confidence if last else None,
            accepted=accepted is not None, out_of_scope=reason == "out_of_scope",
            top=(last.details.get("top") or {}) if last else {},
            gate=self.gate.threshold(last, self.route_of_label(last.label)) if last else 1.0,
        )  # fmt: skip

    def _student_verdict(
        self, text: str, attempts: list[RouteProposal]
    ) -> tuple[RouteProposal | None, EscalationReason | None]:
        """The first proposal of the strategies that passes the gate, or None and why none did."""
        reason: EscalationReason = "no_proposal"
        for strategy in self.strategies:
            proposal = strategy.propose(text)
            if proposal is None:
                continue
            attempts.append(proposal)
            if not proposal.in_scope:
                # A later strategy would choose among the same labels.
                return None, "out_of_scope"
            gate = self.gate.threshold(proposal, self.route_of_label(proposal.label))
            if proposal.confidence is not None and proposal.confidence >= gate:
                return proposal, None
            reason = "below_gate"
        return None, reason

    def _teacher_verdict(
        self, text: str, attempts: list[RouteProposal], student_reason: EscalationReason | None, *, mode: Mode
    ) -> tuple[RouteProposal | None, EscalationReason | None, str | None]:
        """The teacher's proposal (not gated: it is what the student learns from), or None, why, and its error."""
        if self.teacher is None:
            return None, "no_teacher" if mode == "teacher" else student_reason, None
        try:
            proposal = self.teacher.propose(text)
        except Exception as exc:  # a provider error or an answer outside the labels alike: the request escalates
            logger.warning("the router's teacher failed, escalating: %s", exc)
            return None, "teacher_failed", f"{type(exc).__name__}: {exc}"
        attempts.append(proposal)
        return (proposal, None, None) if proposal.in_scope else (None, "out_of_scope", None)
