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
as well as clean requests (:mod:`agentgraph.nodes.request_policy`): it asks a
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
    >>> from agentgraph.graphs.support_router import support_router_path
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

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.types import Command
from pydantic import BaseModel, Field, create_model

from agentgraph.calibration import (
    AnyCalibrator,
    TemperatureScaling,
    selective_accuracy_at_coverage,
    selective_threshold,
)
from agentgraph.acts import ActDetector, ActVerdict
from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier
from agentgraph.clarification import Clarification, ClarificationPolicy
from agentgraph.records.decisions import Decision, DecisionLog, DecisionState, log_decision, thread_id_of
from agentgraph.records.traces import STEP_TAG_PREFIX
from agentgraph.errors import EmptyInputError
from agentgraph.llm import HumanHandoff, escalate, llm_name
from agentgraph.modes import Mode
from agentgraph.nodes.request_policy import ESCALATION, PolicyOutcome, RequestPolicy
from agentgraph.prompting import load_prompt
from agentgraph.shadow import ShadowEvaluator
from agentgraph.slm import SLM
from agentgraph.slm.base import ChoiceResult
from agentgraph.text import require_text, truncate_to_tokens
from agentgraph.write_safety import WriteConsent, WritePolicy, WriteVerdict

logger = logging.getLogger(__name__)

ESCALATE = "escalate"

EscalationReason = Literal[
    "out_of_scope", "below_gate", "no_proposal", "no_teacher", "teacher_failed", "unconfirmed_write"
]


class RouteProposal(BaseModel):
    """What one strategy proposes for one request."""

    label: str
    confidence: float | None = Field(description="calibrated probability that the label is right; None: not measured")
    in_scope: bool = True
    strategy: str
    model: str | None = None
    threshold: float = Field(description="the gate this strategy fitted on its dev set")
    details: dict[str, Any] = Field(default_factory=dict)


class RoutingStrategy(Protocol):
    """One way of proposing a label; ``propose`` returns None to abstain."""

    name: str
    max_input_tokens: int | None

    def count_tokens(self, text: str) -> int: ...

    def propose(self, text: str) -> RouteProposal | None: ...


class RuleStrategy:
    """Rules in order, the first match wins: a regex (searched, case-insensitive) or a predicate, to a label.

    Example:
        >>> rules = RuleStrategy({r"\\bunsubscribe\\b": "newsletter_subscription", (lambda t: "@" in t): "edit_account"})
        >>> rules.propose("please unsubscribe me").label, rules.propose("hello") is None
        ('newsletter_subscription', True)
    """

    name = "rules"
    max_input_tokens = None

    def __init__(self, rules: Mapping[str | Callable[[str], bool], str]) -> None:
        self._rules: list[tuple[str, Callable[[str], bool], str]] = []
        for rule, label in rules.items():
            if isinstance(rule, str):
                matcher = re.compile(rule, re.IGNORECASE).search
                self._rules.append((rule, lambda text, m=matcher: m(text) is not None, label))
            else:
                self._rules.append((getattr(rule, "__name__", repr(rule)), rule, label))

    def count_tokens(self, text: str) -> int:
        return 0

    def propose(self, text: str) -> RouteProposal | None:
        for rule, matches, label in self._rules:
            if matches(text):
                return RouteProposal(label=label, confidence=1.0, strategy=self.name, threshold=0.0, details={"rule": rule})
        return None


class ClassifierStrategy:
    """The trained :class:`~agentgraph.classifier.IntentClassifier`, with its gate and out-of-scope detector."""

    name = "classifier"

    def __init__(self, classifier: IntentClassifier) -> None:
        self.classifier = classifier
        self.max_input_tokens = classifier.encoder.max_input_tokens

    def count_tokens(self, text: str) -> int:
        return self.classifier.encoder.count_tokens(text)

    def propose(self, text: str) -> RouteProposal:
        prediction = self.classifier.predict(text)
        return RouteProposal(
            label=prediction.label,
            confidence=prediction.confidence,
            in_scope=prediction.in_scope,
            strategy=self.name,
            model=self.classifier.encoder.name,
            threshold=self.classifier.gate_threshold,
            details={
                "top": prediction.probabilities,
                "similarity": prediction.similarity,
                "relative_distance": prediction.relative_distance,
            },
        )


_MARKER = re.compile(r"<\s*/?\s*request\s*>", re.IGNORECASE)


class SLMStrategy:
    """The SLM picks one label (constrained choice), shown each label's decision boundary.

    The request is quoted as data in prompt ``router`` (markers inside it are
    stripped, so it cannot close the quote and speak as the instructions).
    Confidence is the chosen label's probability from token log-probs,
    recalibrated by ``calibrator``; :meth:`fit` fits calibrator and gate on
    labelled requests.

    Args:
        slm: any :class:`~agentgraph.slm.SLM`.
        labels: ``{label: description}``, the description saying when to pick the label.
        max_input_tokens: the request is cut to this many tokens (routing needs its beginning; long prompts are slow).
        list_labels: list the labels in the prompt; False for a model fine-tuned on them (a distilled router).
    """

    name = "slm"

    def __init__(
        self,
        slm: SLM,
        labels: Mapping[str, str],
        *,
        calibrator: AnyCalibrator | None = None,
        threshold: float = 0.5,
        max_input_tokens: int = 512,
        prompt_version: int | None = None,
        list_labels: bool = True,
    ) -> None:
        self.slm = slm
        self.labels = dict(labels)
        self.list_labels = list_labels
        self.calibrator = calibrator or TemperatureScaling()
        self.threshold = threshold
        self.max_input_tokens = max_input_tokens
        self.prompt = load_prompt("router", prompt_version)

    def count_tokens(self, text: str) -> int:
        return self.slm.count_tokens(text)

    def render(self, text: str) -> str:
        return self.prompt.render(request=_MARKER.sub(" ", text))

    def choose(self, text: str) -> ChoiceResult:
        """The SLM's choice among the labels for ``text`` (already cleaned and cut), uncalibrated."""
        return self.slm.choose(self.render(text), self.labels, list_labels=self.list_labels)

    def _choose(self, text: str) -> tuple[str, np.ndarray, Any]:
        result = self.choose(text)
        log_probs = np.log(np.maximum([result.probabilities[label] for label in self.labels], 1e-300))
        return result.label, log_probs, result.usage

    def propose(self, text: str) -> RouteProposal:
        label, log_probs, usage = self._choose(text)
        return RouteProposal(
            label=label,
            confidence=float(self.calibrator.confidence(log_probs)[0]),
            strategy=self.name,
            model=usage.model,
            threshold=self.threshold,
            details={"raw_confidence": float(math.exp(log_probs.max())), "prompt": self.prompt.id},
        )

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        *,
        target_accuracy: float = 0.95,
        max_rejection: float = 0.8,
    ) -> SLMStrategy:
        """Calibrate on labelled requests and set the gate (see :func:`~agentgraph.calibration.selective_threshold`)."""
        order = list(self.labels)
        unknown = set(labels) - set(order)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not among the strategy's labels")
        log_probs = np.stack([self._choose(text)[1] for text in texts])
        truth = np.array([order.index(label) for label in labels])
        self.calibrator.fit_logits(log_probs, truth)
        self.threshold = selective_threshold(
            self.calibrator.confidence(log_probs),
            log_probs.argmax(axis=1) == truth,
            target_accuracy=target_accuracy,
            max_rejection=max_rejection,
        )
        return self


def label_probability(reply: AIMessage, label: str) -> float | None:
    """The probability of ``label`` in a JSON reply, from the token log-probs the provider returned (None without them).

    Reads OpenAI's format (``response_metadata["logprobs"]["content"]``): the
    tokens that spell the label inside its JSON string. A tool-call reply has
    no content log-probs, so its confidence stays unknown.
    """
    tokens = ((reply.response_metadata or {}).get("logprobs") or {}).get("content") or []
    text, spans = "", []
    for token in tokens:
        spans.append((len(text), len(text) + len(token["token"]), token["logprob"]))
        text += token["token"]
    quoted = json.dumps(label)
    at = text.find(quoted)
    if at < 0:
        return None
    start, end = at + 1, at + len(quoted) - 1
    return math.exp(sum(logprob for first, last, logprob in spans if first < end and last > start))


class LLMStrategy:
    """The teacher: the frontier LLM picks one label (or out of scope) through ``with_structured_output``.

    The reply's schema has one field, ``intent``, whose type is the label set
    plus :data:`OUT_OF_SCOPE`, so the answer cannot leave it; the request is
    the user message alone (prompt ``router_teacher`` is the system message),
    so a traced call is a training example as it stands. Its calls carry the
    step type ``route`` (tag ``step:route``) for the
    :class:`~agentgraph.records.traces.LLMCallRecorder`. Confidence is the
    label's token probability when the provider returns log-probs (e.g.
    ``ChatOpenAI(logprobs=True)`` with JSON-schema output), else None: it is
    measured, never asked for, and the teacher is not gated.

    Args:
        llm: a chat model that supports ``with_structured_output``.
        labels: ``{label: description}`` or the labels alone.
    """

    name = "llm"
    max_input_tokens = None

    def __init__(
        self, llm: BaseChatModel, labels: Mapping[str, str | None] | Sequence[str], *, prompt_version: int | None = None
    ) -> None:
        self.llm = llm
        self.labels = dict(labels) if isinstance(labels, Mapping) else dict.fromkeys(labels)
        self.model = llm_name(llm)
        self.prompt = load_prompt("router_teacher", prompt_version)
        self.system = self.prompt.render(labels=self.labels, out_of_scope=OUT_OF_SCOPE)
        self.choice = create_model(
            "RouteChoice",
            __doc__="The intent of the customer's request.",
            intent=(Literal[(*self.labels, OUT_OF_SCOPE)], Field(description="one intent from the list")),
        )

    @cached_property
    def structured(self) -> Runnable:
        # Built on first use, so a router that never asks its teacher accepts any chat model.
        return self.llm.with_structured_output(self.choice, include_raw=True).with_config(
            tags=[f"{STEP_TAG_PREFIX}route"]
        )

    def count_tokens(self, text: str) -> int:
        return 0

    def propose(self, text: str, config: RunnableConfig | None = None) -> RouteProposal:
        """The LLM's label for ``text``; raises when the call fails or its reply is not one of the labels."""
        reply = self.structured.invoke([SystemMessage(self.system), HumanMessage(text)], config)
        if reply["parsing_error"] is not None:
            raise reply["parsing_error"]
        if reply["parsed"] is None:
            raise ValueError(f"the LLM did not answer with a {self.choice.__name__}: {reply['raw'].content!r}")
        label = reply["parsed"].intent
        return RouteProposal(
            label=label,
            confidence=label_probability(reply["raw"], label),
            in_scope=label != OUT_OF_SCOPE,
            strategy=self.name,
            model=self.model,
            threshold=0.0,
            details={"prompt": self.prompt.id},
        )


class ConfidenceGate(BaseModel):
    """Minimum calibrated confidence to accept a proposal.

    ``thresholds`` is keyed by label or route (a label's entry wins); anything
    else uses ``default``, or, when that is None, the threshold the proposing
    strategy fitted on its dev set.
    """

    thresholds: dict[str, float] = Field(default_factory=dict)
    default: float | None = None

    def threshold(self, proposal: RouteProposal, route: str) -> float:
        if proposal.label in self.thresholds:
            return self.thresholds[proposal.label]
        if route in self.thresholds:
            return self.thresholds[route]
        return proposal.threshold if self.default is None else self.default


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
        default="routed", description="routed, escalated, clarified_<kind> (a question asked), declined, clarified_answer"
    )
    act: ActVerdict | None = Field(default=None, description="what the message does, when the router reads acts")
    clarification: Clarification | None = Field(default=None, description="the question asked this turn, if any")
    consent: WriteConsent | None = Field(default=None, description="the customer's consent to the write this route makes")
    write: WriteVerdict | None = Field(default=None, description="the write-safety rule's verdict, for a write label")

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
            :class:`~agentgraph.nodes.request_policy.RequestPolicy`): read the message's act, keep writes to
            messages that ask for them (:mod:`agentgraph.write_safety`), and ask instead of guessing
            (:mod:`agentgraph.clarification`). Without them a label is served as read.
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
        if teacher is None and mode != "student":
            escalates = "every request" if mode == "teacher" else "what its strategies leave below the gate"
            logger.warning("a router in %s mode has no teacher: %s escalates", mode, escalates)

    def route_of_label(self, label: str) -> str:
        return self.routes.get(label, self.default_route or label)

    def destinations(self, labels: Iterable[str]) -> tuple[str, ...]:
        """Every route ``labels`` can reach, the escalation route and the clarification route (for ``add_node(destinations=...)``)."""
        clarify = [self.policy.clarify_route] if self.policy is not None and self.policy.clarify_route else []
        routes = [*(self.route_of_label(label) for label in labels), self.escalation_route, *clarify]
        return tuple(dict.fromkeys(routes))

    def fit_to_budgets(self, text: str) -> tuple[str, bool]:
        """``text`` cut (at a word boundary, with a logged warning) so that every strategy can read all of it.

        In teacher mode no strategy reads it, and the text stays whole.
        """
        truncated = False
        for strategy in self.strategies if self.mode != "teacher" else ():
            if strategy.max_input_tokens is not None:
                text, cut = truncate_to_tokens(text, max_tokens=strategy.max_input_tokens, count_tokens=strategy.count_tokens)
                truncated = truncated or cut
        return text, truncated

    def decide(self, text: str | None, *, pending: Clarification | None = None) -> RoutingDecision:
        """Route one request; :class:`~agentgraph.errors.EmptyInputError` when it holds no text.

        ``pending`` is the question the router asked on this thread last turn: when the message answers
        it, the answer is routed with the question's context.
        """
        started = time.perf_counter()
        cleaned = require_text(text, what="request")
        routed, truncated = self.fit_to_budgets(cleaned)
        attempts: list[RouteProposal] = []
        accepted, reason, teacher_error = None, "no_proposal", None
        if self.mode != "teacher":
            accepted, reason = self._student_verdict(routed, attempts)
        act = self.policy.act_of(routed) if self.policy is not None else None
        outcome = None
        if self.policy is not None and pending is not None:
            outcome = self.policy.answer(pending, routed, best_label=attempts[-1].label if attempts else None, act=act)
        if outcome is None:
            outcome = self._settle(routed, act, accepted, reason, attempts)
        # Out of scope means the label set does not fit the request: the teacher would choose among the same labels.
        if outcome is ESCALATION and (self.mode == "teacher" or (self.mode == "auto" and reason != "out_of_scope")):
            accepted, reason, teacher_error = self._teacher_verdict(routed, attempts, reason)
            if accepted is not None:
                outcome = self._settle(routed, act, accepted, reason, attempts)
        fields = {
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
        if outcome.clarification is not None:
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
            if proposal.confidence >= self.gate.threshold(proposal, self.route_of_label(proposal.label)):
                return proposal, None
            reason = "below_gate"
        return None, reason

    def _teacher_verdict(
        self, text: str, attempts: list[RouteProposal], student_reason: EscalationReason
    ) -> tuple[RouteProposal | None, EscalationReason | None, str | None]:
        """The teacher's proposal (not gated: it is what the student learns from), or None, why, and its error."""
        if self.teacher is None:
            return None, "no_teacher" if self.mode == "teacher" else student_reason, None
        try:
            proposal = self.teacher.propose(text)
        except Exception as exc:  # a provider error or an answer outside the labels alike: the request escalates
            logger.warning("the router's teacher failed, escalating: %s", exc)
            return None, "teacher_failed", f"{type(exc).__name__}: {exc}"
        attempts.append(proposal)
        return (proposal, None, None) if proposal.in_scope else (None, "out_of_scope", None)


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
    escalation: AIMessage | HumanHandoff


def request_text(value: Any) -> str | None:
    """The request in a state value: a string, a message, or the last of a list of messages."""
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, Mapping):
        return value.get("content")
    return value


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
    mode: Mode = "student",
    teacher: LLMStrategy | None = None,
    shadow: ShadowEvaluator | None = None,
    acts: ActDetector | None = None,
    writes: WritePolicy | None = None,
    clarification: ClarificationPolicy | None = None,
) -> Callable[[dict[str, Any], RunnableConfig], Command | dict[str, Any]]:
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
        shadow: compares a sample of the strategies' accepted routes with the teacher's, in the background
            (decisions of kind ``shadow`` in ``decision_log``).
        acts: reads what the message does (:class:`~agentgraph.acts.ActDetector`): statements, refusals
            and greetings are acknowledged, never served as requests.
        writes: the labels whose routes write, and the evidence a write needs to run unasked
            (:mod:`agentgraph.write_safety`); the node writes the customer's consent to ``write_consent``.
        clarification: the questions the router asks instead of guessing (:mod:`agentgraph.clarification`);
            their route is ``clarification.route``. The question asked is kept under ``clarification``
            (with a checkpointer, across turns), and the thread's next message is read as its answer.

    Writes ``route``, ``intent`` (the label; None when escalated or clarified), ``request``, ``route_confidence``,
    ``escalation_reason``, ``clarification``, ``write_consent`` and one record under ``decisions``
    (its ``metadata["mode"]`` says the mode, its ``outcome`` whether the request was routed, clarified or escalated).
    Empty input raises :class:`~agentgraph.errors.EmptyInputError` after logging a ``rejected`` record.
    """
    router = Router(
        [strategies] if hasattr(strategies, "propose") else list(strategies),
        routes=routes, default_route=default_route, gate=gate, escalation_route=escalation_route, mode=mode,
        teacher=teacher, acts=acts, writes=writes, clarification=clarification,
    )  # fmt: skip

    def route_request(state: dict[str, Any], config: RunnableConfig) -> Command | dict[str, Any]:
        raw = request_text(state.get(input_key))
        pending = state.get("clarification")
        try:
            verdict = router.decide(raw, pending=pending if isinstance(pending, Clarification) else None)
        except EmptyInputError:
            log_decision(
                decision_log,
                Decision(node=name, kind="route", input=raw, outcome="rejected", thread_id=thread_id_of(config),
                         metadata={"mode": mode}),
            )  # fmt: skip
            raise
        decision = Decision(
            node=name,
            kind="route",
            input=verdict.text,
            output={"route": verdict.route, "intent": verdict.label},
            confidence=verdict.confidence,
            strategy=verdict.strategy,
            escalated=verdict.escalated,
            outcome=verdict.reason or verdict.outcome,
            model=verdict.model,
            latency_ms=verdict.latency_ms,
            thread_id=thread_id_of(config),
            metadata={
                "mode": mode,
                "truncated": verdict.truncated,
                "input_chars": verdict.input_chars,
                "attempts": [attempt.model_dump() for attempt in verdict.attempts],
                "teacher_error": verdict.teacher_error,
                **({"act": verdict.act.model_dump()} if verdict.act else {}),
                **({"clarification": verdict.clarification.model_dump()} if verdict.clarification else {}),
                **({"write": verdict.write.model_dump()} if verdict.write else {}),
                **({"consent": verdict.consent.how} if verdict.consent else {}),
                **({"answers": pending.question} if verdict.outcome in ("clarified_answer", "declined") else {}),
            },
        )
        log_decision(decision_log, decision)
        if (
            shadow is not None and teacher is not None and verdict.label is not None
            and verdict.strategy not in (teacher.name, "clarification")
        ):  # fmt: skip
            shadow.evaluate(
                decision, verdict.label, lambda shadow_config: teacher.propose(verdict.text, shadow_config).label,
                teacher_model=teacher.model, decision_log=decision_log,
            )  # fmt: skip
        update = {
            "route": verdict.route,
            "intent": verdict.label,
            "request": verdict.text,
            "route_confidence": verdict.confidence,
            "escalation_reason": verdict.reason,
            "clarification": verdict.clarification,
            "write_consent": verdict.consent,
            "decisions": [decision],
        }
        return Command(goto=verdict.route, update=update) if goto else update

    route_request.router = router  # for add_node(destinations=route_request.router.destinations(labels))
    return route_request


def create_escalation_node(
    llm: BaseChatModel | None,
    *,
    input_key: str = "text",
    output_key: str = "escalation",
    system: str | None = None,
    decision_log: DecisionLog | None = None,
    name: str = "escalate",
) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    """The node a router escalates to: ``llm`` answers the request, or a person gets a ticket.

    Writes an ``AIMessage`` or a :class:`~agentgraph.llm.HumanHandoff` to
    ``output_key`` (a handoff when ``llm`` is None or fails) and one record.
    """

    def escalate_request(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        started = time.perf_counter()
        text = request_text(state.get(input_key)) or ""
        reason = f"router: {state.get('escalation_reason') or 'escalated'}"
        prompt = [("system", system), ("human", text)] if system else text
        result = escalate(llm, prompt, reason=reason)
        handed_off = isinstance(result, HumanHandoff)
        decision = Decision(
            node=name,
            kind="llm_call",
            input=text,
            output=result.model_dump(mode="json") if handed_off else result.content,
            strategy="human" if handed_off else "llm",
            escalated=True,
            outcome="handoff" if handed_off else "answered",
            model=None if handed_off else (result.response_metadata or {}).get("model_name"),
            latency_ms=(time.perf_counter() - started) * 1000,
            thread_id=thread_id_of(config),
            metadata={"reason": reason},
        )
        return {output_key: result, "decisions": [log_decision(decision_log, decision)]}

    return escalate_request


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
    confusions: list[tuple[str, str, int]] = Field(description="most frequent (expected, routed) errors, answered ones only")
    latency_ms_p50: float
    latency_ms_p95: float


def evaluate_router(router: Router, rows: Iterable[tuple[str, str]], *, top_confusions: int = 10) -> RouterEvaluation:
    """Route each ``(text, label)`` one at a time (as in service, each on a new thread) and score the result.

    Accuracy compares the proposing strategy's top label, before the gate, with
    the expected label; an escalated or clarified request counts toward
    coverage, never as an error among the answered ones.
    """
    return score_verdicts(((label, router.decide(text)) for text, label in rows), top_confusions=top_confusions)


def score_verdicts(
    verdicts: Iterable[tuple[str, RoutingDecision]], *, top_confusions: int = 10
) -> RouterEvaluation:
    """The :class:`RouterEvaluation` of ``(expected label, verdict)`` pairs routed already (see :func:`evaluate_router`)."""
    latencies, in_scope, out_of_scope = [], [], []
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    clarified_in_scope, clarified_out_of_scope = [], []
    errors: Counter[tuple[str, str]] = Counter()
    for label, verdict in verdicts:
        latencies.append(verdict.latency_ms)
        answered = verdict.label is not None
        if verdict.escalated:
            reasons[verdict.reason] += 1
        if verdict.clarified:
            kinds[verdict.clarification.kind] += 1
        if label == OUT_OF_SCOPE:
            out_of_scope.append(not answered)
            clarified_out_of_scope.append(verdict.clarified)
            if answered:
                errors[(label, verdict.label)] += 1
        else:
            confidence = verdict.confidence if verdict.confidence is not None else -math.inf
            in_scope.append((verdict.top_label == label, answered, confidence))
            clarified_in_scope.append(verdict.clarified)
            if answered and verdict.label != label:
                errors[(label, verdict.label)] += 1
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
        } if in_scope else {},
        oos_escalation_rate=float(np.mean(out_of_scope)) if out_of_scope else None,
        clarification_rate=float(np.mean(clarified_in_scope)) if in_scope else None,
        oos_clarification_rate=float(np.mean(clarified_out_of_scope)) if out_of_scope else None,
        escalations=dict(reasons),
        clarifications=dict(kinds),
        confusions=[(expected, routed, n) for (expected, routed), n in errors.most_common(top_confusions)],
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else 0.0,
        latency_ms_p95=float(np.percentile(latencies, 95)) if latencies else 0.0,
    )
