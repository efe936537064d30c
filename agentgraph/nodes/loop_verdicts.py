"""Who judges a loop observation for the evaluator node: the embedded SLM, or a trained verdict classifier.

:func:`~agentgraph.nodes.loop.create_evaluator` takes anything with the
:class:`VerdictJudge` protocol (or a plain :class:`~agentgraph.slm.SLM`, which
it wraps in :class:`SLMVerdictJudge`). A judge returns a
:class:`VerdictJudgement`: a measured distribution over the verdicts the guards
(:func:`~agentgraph.nodes.loop_state.allowed_verdicts`) left open, never a
confidence the model was asked to state.

- :class:`SLMVerdictJudge` asks the SLM to choose by constrained choice; its
  probabilities are the softmax of the labels' sequence log-probabilities.
- :class:`VerdictClassifier` reads the observation with an
  :class:`~agentgraph.classifier.IntentClassifier` (MiniLM embeddings plus
  character n-grams, temperature-calibrated on cross-fitted scores) over three
  classes: ``proceed`` (the result fits the plan: ``continue`` while steps are
  left, ``done`` once the plan is exhausted, which the guards tell apart),
  ``replan`` and ``escalate``. The class probabilities are renormalised over the
  verdicts the guards allow. It is trained on ``data/loop_verdicts.jsonl``
  (loop states written for this project across many domains, support-shop
  steps among them; never the benchmark's observations) in about 5 s on two
  cores and cached in ``cache_dir()/artifacts/loop-verdicts``
  (:func:`verdict_classifier_path`), retrained when its data or recipe change.

Why a classifier: the 135M SLM's picks follow the plan's position, not the
result's content (``python benchmarks/loop.py`` measures both), while what
decides a verdict is mostly in the result's wording: "not found", "instead",
"still" (the plan is wrong) against "needs approval", "only an admin can",
"payment" (a person must act).

Example:
    >>> from agentgraph.nodes.loop_state import Observation
    >>> from agentgraph.nodes.loop_verdicts import load_verdict_classifier, observation_text, verdict_class
    >>> observation_text(Observation(step="cancel order 48213", result="Order 48213 is cancelled."))
    'Order 48213 is cancelled.'
    >>> observation_text(Observation(step="look up order 1", result="TimeoutError", error=True))
    'Step failed: TimeoutError'
    >>> verdict_class("done"), verdict_class("continue"), verdict_class("escalate")
    ('proceed', 'proceed', 'escalate')
    >>> classifier = load_verdict_classifier()  # doctest: +SKIP
    >>> state = {"goal": "Cancel order 48213", "plan": ["cancel order 48213"], "step_index": 1,
    ...          "observations": [Observation(step="cancel order 48213", result="Order 48213 is cancelled.")]}
    >>> classifier.judge(state, ["done", "replan", "escalate"]).label  # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from agentgraph.classifier import IntentClassifier, SentenceEncoder, cached_classifier
from agentgraph.errors import AgentGraphError
from agentgraph.nodes.loop_state import VERDICT_DESCRIPTIONS, LabelledObservation, Observation
from agentgraph.prompting import PromptTemplate, load_prompt
from agentgraph.slm import SLM
from agentgraph.slm.base import Usage
from agentgraph.slm.models import cache_dir

VerdictClass = Literal["proceed", "replan", "escalate"]
TRAINING_DATA = Path(__file__).parent / "data" / "loop_verdicts.jsonl"
VERDICT_CLASSIFIER_SETTINGS: dict[str, Any] = {"lexical_weight": 1.5, "regularization": 30.0}
"""Character n-grams at more than full weight: the cue words of a verdict ("instead", "approval", "not found") matter
more than the topic the embedding mostly carries. Both were picked on cross-fitted accuracy over the training data."""
RECIPE = "loop-verdicts-v1"
"""Names how the classifier is trained (the text it reads, its classes, its settings); change it with any of them."""
FAILED_PREFIX = "Step failed: "


class VerdictModelError(AgentGraphError):
    """A verdict judge could not judge the observation; the evaluator escalates instead."""


class VerdictJudgement(BaseModel):
    """A judge's verdict with its measured distribution over the verdicts it was offered."""

    label: str
    probabilities: dict[str, float] = Field(description="P(verdict | state) over the offered verdicts, summing to 1")
    model: str | None = None
    usage: Usage | None = Field(default=None, description="what the SLM's call cost, for the SLM judge")

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


@runtime_checkable
class VerdictJudge(Protocol):
    """What the evaluator node asks: the verdict among ``labels`` for the state's latest observation."""

    strategy: str
    """Recorded as the decision's strategy (``slm``, ``classifier``)."""
    name: str
    """How decisions name the judge in their reasons (``SLM``, ``classifier``)."""

    def judge(self, state: Mapping[str, Any], labels: Sequence[str]) -> VerdictJudgement: ...


class SLMVerdictJudge:
    """The SLM chooses by constrained choice on the ``loop_evaluate`` prompt; SLM errors propagate (as SLMError)."""

    strategy = "slm"
    name = "SLM"

    def __init__(self, slm: SLM, *, prompt: PromptTemplate | None = None) -> None:
        self.slm = slm
        self.template = prompt or load_prompt("loop_evaluate")

    def judge(self, state: Mapping[str, Any], labels: Sequence[str]) -> VerdictJudgement:
        observation: Observation = state["observations"][-1]
        plan, number = state["plan"], state["step_index"]
        prompt = self.template.render(
            goal=state["goal"],
            number=number,
            total=len(plan),
            step=observation.step,
            error=observation.error,
            observation=observation.result,
            next_step=plan[number] if number < len(plan) else None,
        )
        choice = self.slm.choose(prompt, {label: VERDICT_DESCRIPTIONS[label] for label in labels})
        return VerdictJudgement(
            label=choice.label, probabilities=choice.probabilities, model=choice.usage.model, usage=choice.usage
        )


def verdict_class(verdict: str) -> VerdictClass:
    """The classifier's class for a verdict: ``continue`` and ``done`` are both "the result fits the plan"."""
    return "proceed" if verdict in ("continue", "done") else "escalate" if verdict == "escalate" else "replan"


def observation_text(observation: Observation) -> str:
    """What the classifier reads of an observation: its result, marked when the step failed."""
    return f"{FAILED_PREFIX}{observation.result}" if observation.error else observation.result


class VerdictClassifier:
    """A trained :class:`~agentgraph.classifier.IntentClassifier` over ``proceed``/``replan``/``escalate``, as a judge."""

    strategy = "classifier"
    name = "classifier"

    def __init__(self, classifier: IntentClassifier) -> None:
        self.classifier = classifier
        self.model = f"verdict-classifier:{classifier.manifest.encoder}"

    def judge(self, state: Mapping[str, Any], labels: Sequence[str]) -> VerdictJudgement:
        text = observation_text(state["observations"][-1])
        try:
            by_class = self.classifier.predict(text, detect_scope=False).probabilities
        except Exception as exc:  # an encoder or model failure must reach the evaluator's fallback, not crash the loop
            raise VerdictModelError(f"the verdict classifier failed: {type(exc).__name__}: {exc}") from exc
        weights = {label: by_class.get(verdict_class(label), 0.0) for label in labels}
        total = sum(weights.values())
        if total <= 0.0:
            raise VerdictModelError(f"the verdict classifier gives no probability to any of {list(labels)}")
        probabilities = {label: weight / total for label, weight in weights.items()}
        return VerdictJudgement(label=max(probabilities, key=probabilities.__getitem__), probabilities=probabilities,
                                model=self.model)  # fmt: skip


def read_labelled_observations(path: str | Path) -> list[LabelledObservation]:
    """The labelled loop states of a JSON-lines file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [LabelledObservation.model_validate_json(line) for line in lines if line.strip()]


def train_verdict_classifier(
    path: str | Path = TRAINING_DATA, *, encoder: SentenceEncoder | None = None
) -> IntentClassifier:
    """Train the verdict classifier on the labelled states in ``path``; each goal's states are held out together."""
    cases = read_labelled_observations(path)
    observations = [case.state()["observations"][-1] for case in cases]
    return IntentClassifier.train(
        [observation_text(observation) for observation in observations],
        [verdict_class(case.verdict) for case in cases],
        groups=[case.goal for case in cases],
        encoder=encoder,
        descriptions={"proceed": "the result fits the plan", "replan": VERDICT_DESCRIPTIONS["replan"],
                      "escalate": "a person, a permission or a payment is needed"},
        **VERDICT_CLASSIFIER_SETTINGS,
    )  # fmt: skip


def verdict_classifier_path(*, rebuild: bool = False) -> Path:
    """The packaged verdict classifier's folder, trained on first use (~5 s on two cores) and when stale."""
    digest = hashlib.sha256(json.dumps([RECIPE, VERDICT_CLASSIFIER_SETTINGS]).encode())
    digest.update(TRAINING_DATA.read_bytes())
    return cached_classifier(cache_dir() / "artifacts" / "loop-verdicts", digest.hexdigest(), train_verdict_classifier,
                             rebuild=rebuild, training_seconds=6)  # fmt: skip


def load_verdict_classifier(encoder: SentenceEncoder | None = None) -> VerdictClassifier:
    """The packaged verdict classifier as a judge, on ``encoder`` (share the router's to load MiniLM once)."""
    return VerdictClassifier(IntentClassifier.load(verdict_classifier_path(), encoder=encoder))


def as_verdict_judge(judge: SLM | VerdictJudge) -> VerdictJudge:
    """``judge`` itself, or an SLM wrapped in :class:`SLMVerdictJudge`."""
    return judge if isinstance(judge, VerdictJudge) else SLMVerdictJudge(judge)
