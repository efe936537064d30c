"""Routing strategies: the ways a router proposes a label for a request, and the gate that accepts one.

- :class:`RuleStrategy`: regular expressions or predicates mapped to labels (confidence 1.0).
- :class:`ClassifierStrategy`: the trained embedding classifier, calibrated, with its out-of-scope detector.
- :class:`SLMStrategy`: the SLM's constrained choice among labels, temperature-calibrated on a dev set.
- :class:`LLMStrategy`: the teacher, the frontier LLM choosing a label through ``with_structured_output``.

:class:`~agentgraph.routing.router.Router` tries them in order; :class:`ConfidenceGate` says which
proposal it accepts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field, create_model

from agentgraph.calibration import AnyCalibrator, TemperatureScaling, selective_threshold
from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier
from agentgraph.llm import llm_name
from agentgraph.prompting import load_prompt
from agentgraph.records.traces import STEP_TAG_PREFIX
from agentgraph.slm import SLM
from agentgraph.slm.base import ChoiceResult, Usage


class RouteProposal(BaseModel):
    """What one strategy proposes for one request."""

    label: str
    confidence: float | None = Field(description="calibrated probability that the label is right; None: not measured")
    in_scope: bool = True
    strategy: str
    model: str | None = None
    threshold: float = Field(description="the gate this strategy fitted on its dev set")
    details: dict[str, Any] = Field(default_factory=dict)
    usage: Usage | None = Field(default=None, description="what the SLM call cost, for an SLM strategy")


class RoutingStrategy(Protocol):
    """One way of proposing a label; ``propose`` returns None to abstain."""

    name: str

    @property
    def max_input_tokens(self) -> int | None:
        """The request is cut to this many tokens before ``propose`` (None: not cut); a plain int attribute will do."""

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
                self._rules.append((rule, _searcher(rule), label))
            else:
                self._rules.append((getattr(rule, "__name__", repr(rule)), rule, label))

    def count_tokens(self, text: str) -> int:
        return 0

    def propose(self, text: str) -> RouteProposal | None:
        for rule, matches, label in self._rules:
            if matches(text):
                return RouteProposal(
                    label=label, confidence=1.0, strategy=self.name, threshold=0.0, details={"rule": rule}
                )
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


def _searcher(pattern: str) -> Callable[[str], bool]:
    """Whether ``pattern`` occurs in a text, ignoring case."""
    search = re.compile(pattern, re.IGNORECASE).search
    return lambda text: search(text) is not None


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
            usage=usage,
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


ROUTE_CHOICE = "RouteChoice"
"""The name of the teacher's reply schema (the tool ``with_structured_output`` binds): one field, ``intent``."""


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
            ROUTE_CHOICE,
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
