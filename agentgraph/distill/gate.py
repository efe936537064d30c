"""Gate and promote a distilled router SLM (``agentgraph distill gate``), or a retrained classifier.

:func:`gate_router` evaluates a model folder written by
:func:`~agentgraph.distill.train.train_router_slm` with the real router: an
:class:`~agentgraph.routing.SLMStrategy` on
:class:`~agentgraph.slm.TransformersSLM`, its calibrator and confidence gate
fitted on the dataset's dev split, then :func:`~agentgraph.routing.evaluate_router`
on the held-out test split, one request at a time as in service. The base
model is evaluated the same way, with the standard router prompt (intent names
and the decision boundaries given as ``descriptions``), on the same rows. The
report gives agreement with the labels (the teacher's answers), coverage at
the gate, selective accuracy and latency p50/p95 for both.

:func:`promote` accepts an artifact only when its agreement reaches the
threshold (default 0.92) on the data it was trained with, records the decision
(accepted or refused) in the artifact's manifest, and raises
:class:`PromotionRefusedError` when it refuses.

:func:`gate_classifier` gates a retrained :class:`~agentgraph.classifier.IntentClassifier`
folder against the one serving now, on held-out labelled requests: accepted when it is right on
at least ``min_accuracy`` of what it answers, answers at least as many of them without escalating,
and its wrong answers grow by at most ``max_error_rise`` of the rows, so the registry serves it
without ``--force``.

:func:`load_router_strategy` gives the strategy a graph routes with: the
artifact's own label set (codes are mapped back to intents), prompt and input
budget, and the calibrator and confidence gate its last gate fitted on dev
(recorded by :func:`promote`), so nothing of the training setup or the gate has
to be repeated by hand.

Example:
    >>> from agentgraph.distill.gate import GateReport, promotion_decision
    >>> promotion_decision(agreement=0.95, threshold=0.92, dataset_matches=True)
    ('accepted', 'agreement 0.9500 >= threshold 0.9200')
    >>> promotion_decision(agreement=0.90, threshold=0.92, dataset_matches=True)[0]
    'refused'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentgraph.calibration import AnyCalibrator
from agentgraph.classifier import IntentClassifier
from agentgraph.distill.train import (
    DistillError,
    load_artifact,
    load_route_dataset,
    read_manifest,
    stratified_rows,
    write_manifest,
)
from agentgraph.routing import (
    ClassifierStrategy,
    RouteProposal,
    Router,
    RouterEvaluation,
    SLMStrategy,
    evaluate_router,
)
from agentgraph.slm import SLM

DEFAULT_THRESHOLD = 0.92
CLASSIFIER_MIN_ACCURACY = 0.95
"""The selective accuracy (right among what it answers) a classifier needs to pass :func:`gate_classifier`."""
CLASSIFIER_MAX_ERROR_RISE = 0.01
"""How much more of the rows a classifier may answer wrongly than the current one and still pass."""


class PromotionRefusedError(DistillError):
    """The artifact's agreement on the held-out split is below the promotion threshold.

    ``report`` is what the gate measured, where the gate that refused made one.
    """

    def __init__(self, message: str, *, report: GateVerdict | None = None) -> None:
        super().__init__(message)
        self.report = report


class DistilledSLMStrategy(SLMStrategy):
    """:class:`SLMStrategy` over a distilled model's own label set; proposals and fitting speak intents.

    Args:
        slm: the distilled model.
        labels: ``{prompt label: description}`` as the model was trained on.
        intents: ``{prompt label: intent}`` (codes to intents; identity for named labels).
    """

    def __init__(self, slm: SLM, labels: Mapping[str, str], intents: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(slm, labels, **kwargs)
        self.intents = dict(intents)
        self._codes = {intent: code for code, intent in self.intents.items()}

    @property
    def intent_labels(self) -> list[str]:
        return [self.intents[label] for label in self.labels]

    def propose(self, text: str) -> RouteProposal:
        proposal = super().propose(text)
        return proposal.model_copy(update={"label": self.intents[proposal.label]})

    def fit(self, texts: Sequence[str], labels: Sequence[str], **kwargs: Any) -> DistilledSLMStrategy:
        unknown = sorted(set(labels) - set(self._codes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the distilled model's intents")
        super().fit(texts, [self._codes[label] for label in labels], **kwargs)
        return self


class GateCalibration(BaseModel):
    """What a gate fitted on dev for a distilled router: its confidence calibration and the gate on it."""

    calibrator: AnyCalibrator
    threshold: float = Field(description="the calibrated confidence below which the router escalates")


def load_router_strategy(
    model_dir: str | os.PathLike[str], slm: SLM | None = None, *, gated: bool = False
) -> DistilledSLMStrategy:
    """The routing strategy of a distilled model folder (``slm``: that folder loaded elsewhere, e.g. through vLLM).

    It is calibrated and gated as its last gate fitted it on dev (:func:`promote` records that). With
    ``gated`` (serving), a folder never gated raises :class:`DistillError`: its confidences would be the
    raw log-prob ones, and its gate a guess.
    """
    manifest, slm = load_artifact(model_dir, "route", slm)
    calibration = (manifest.get("promotion") or {}).get("calibration")
    if gated and calibration is None:
        raise DistillError(
            f"{model_dir} was never gated, so its confidence has no calibration and no gate to route on: "
            f"`agentgraph distill gate --model {model_dir} --promote` fits them"
        )
    labels = manifest["labels"]
    router = manifest["router"]
    strategy = DistilledSLMStrategy(
        slm, labels["shown"], labels["intents"], max_input_tokens=router["max_input_tokens"],
        list_labels=router.get("list_labels", True),
    )  # fmt: skip
    if calibration is not None:
        fitted = GateCalibration.model_validate(calibration)
        strategy.calibrator, strategy.threshold = fitted.calibrator, fitted.threshold
    return strategy


def base_strategy(slm: SLM, labels: Sequence[str], descriptions: Mapping[str, str] | None = None) -> SLMStrategy:
    """The router strategy as it runs on a model that was never distilled: intent names with their boundaries
    (``descriptions``, ``{intent: decision boundary}``; an intent they leave out is shown by its name alone)."""
    return SLMStrategy(slm, {label: (descriptions or {}).get(label, "") for label in labels})


class GateSide(BaseModel):
    """One model's figures on the gate's rows."""

    model: str
    gate_threshold: float = Field(description="the calibrated-confidence gate fitted on dev")
    calibrator: AnyCalibrator = Field(description="the confidence calibration fitted on dev")
    evaluation: RouterEvaluation


class GateVerdict(BaseModel):
    """What every gate report holds: the artifact, the data, the agreement and the promotion decision."""

    model_dir: str
    data_dir: str
    dataset_sha256: str
    dataset_matches: bool = Field(
        description="the data is the data the artifact was trained on (its test split is held out)"
    )
    test_rows: int
    agreement: float = Field(description="the student's answer equals the label (teacher), on test")
    threshold: float
    decision: Literal["accepted", "refused"]
    reason: str

    @property
    def passed(self) -> bool:
        return self.decision == "accepted"


class GateReport(GateVerdict):
    """What :func:`gate_router` measured, and whether the artifact may be promoted."""

    dev_rows: int
    target_accuracy: float
    max_rejection: float
    student: GateSide
    base: GateSide | None

    def promotion_figures(self) -> dict[str, Any]:
        calibration = GateCalibration(calibrator=self.student.calibrator, threshold=self.student.gate_threshold)
        return {
            "coverage": self.student.evaluation.coverage,
            "selective_accuracy": self.student.evaluation.selective_accuracy,
            "calibration": calibration.model_dump(mode="json"),
        }


def promotion_decision(
    *, agreement: float, threshold: float, dataset_matches: bool
) -> tuple[Literal["accepted", "refused"], str]:
    """``("accepted" | "refused", why)`` for an artifact with ``agreement`` on held-out data."""
    if not dataset_matches:
        return "refused", "gated on other data than the artifact was trained on: its test split may not be held out"
    if agreement >= threshold:
        return "accepted", f"agreement {agreement:.4f} >= threshold {threshold:.4f}"
    return "refused", f"agreement {agreement:.4f} < threshold {threshold:.4f}"


def _fit_and_evaluate(strategy: SLMStrategy, dev: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]],
                      *, target_accuracy: float, max_rejection: float) -> GateSide:  # fmt: skip
    strategy.fit(
        [t for t, _ in dev], [label for _, label in dev], target_accuracy=target_accuracy, max_rejection=max_rejection
    )
    evaluation = evaluate_router(Router([strategy]), test)
    return GateSide(
        model=strategy.slm.model_name, gate_threshold=strategy.threshold, calibrator=strategy.calibrator,
        evaluation=evaluation,
    )  # fmt: skip


def gate_router(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
    dev_limit: int | None = None,
    base: bool | str | os.PathLike[str] = True,
    base_limit: int | None = None,
    target_accuracy: float = 0.995,
    max_rejection: float = 0.1,
    slm: SLM | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> GateReport:
    """Evaluate the distilled router in ``model_dir`` on held-out data, against the base model.

    Args:
        data_dir: the dataset folder (default: the one recorded in the artifact's manifest).
        limit: test rows, taken round-robin over intents (None: all).
        dev_limit: dev rows for calibration and the gate, taken round-robin over intents (None: all).
        base: True for the base model the artifact was trained from, a model folder, or False to skip.
        base_limit: dev and test rows for the base model (None: the same as the student's; the base is slower).
        target_accuracy, max_rejection: how the gate is fitted on dev
            (:func:`~agentgraph.calibration.selective_threshold`).
        slm: the artifact already loaded (e.g. a vLLM server serving it); None loads it in-process.
        descriptions: ``{intent: decision boundary}`` for the base model's prompt (:func:`base_strategy`).
    """
    from agentgraph.slm import TransformersSLM

    manifest = read_manifest(model_dir)
    dataset = load_route_dataset(data_dir or manifest["dataset"]["folder"])
    dev = dataset.splits["dev"] if dev_limit is None else stratified_rows(dataset.splits["dev"], dev_limit)
    test = dataset.splits["test"] if limit is None else stratified_rows(dataset.splits["test"], limit)
    if not dev or not test:
        raise DistillError(f"{dataset.folder} has {len(dev)} dev and {len(test)} test rows; the gate needs both")
    strategy = load_router_strategy(model_dir, slm)
    student = _fit_and_evaluate(strategy, dev, test, target_accuracy=target_accuracy, max_rejection=max_rejection)
    base_side = None
    if base is not False:
        base_folder = manifest["base_model"] if base is True else base
        base_slm = TransformersSLM(base_folder)
        base_dev, base_test = dev, test
        if base_limit is not None:
            base_dev, base_test = stratified_rows(dev, base_limit), stratified_rows(test, base_limit)
        base_side = _fit_and_evaluate(
            base_strategy(base_slm, strategy.intent_labels, descriptions), base_dev, base_test,
            target_accuracy=target_accuracy, max_rejection=max_rejection,
        )  # fmt: skip
    agreement = student.evaluation.accuracy or 0.0
    matches = dataset.sha256 == manifest["dataset"]["sha256"]
    decision, reason = promotion_decision(agreement=agreement, threshold=threshold, dataset_matches=matches)
    return GateReport(
        model_dir=str(model_dir), data_dir=str(dataset.folder), dataset_sha256=dataset.sha256, dataset_matches=matches,
        dev_rows=len(dev), test_rows=len(test), target_accuracy=target_accuracy, max_rejection=max_rejection,
        student=student, base=base_side, agreement=agreement, threshold=threshold, decision=decision, reason=reason,
    )  # fmt: skip


def promote(model_dir: str | os.PathLike[str], report: Any) -> dict[str, Any]:
    """Record the gate's decision in the artifact's manifest; raises :class:`PromotionRefusedError` when refused.

    ``report`` is a :class:`GateReport` or an extraction gate's report
    (:class:`~agentgraph.distill.extract.ExtractionGateReport`).

    The decision is written either way (under ``promotion``, the latest, and
    ``gate_history``, all of them), so a refused artifact says why.
    """
    if Path(report.model_dir).resolve() != Path(model_dir).resolve():
        raise DistillError(f"the report is about {report.model_dir}, not {model_dir}; gate this artifact first")
    manifest = read_manifest(model_dir)
    record = {
        "decision": report.decision,
        "reason": report.reason,
        "agreement": report.agreement,
        "threshold": report.threshold,
        **report.promotion_figures(),
        "test_rows": report.test_rows,
        "dataset_sha256": report.dataset_sha256,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    manifest["promotion"] = record
    manifest.setdefault("gate_history", []).append(record)
    write_manifest(model_dir, manifest)
    if report.decision != "accepted":
        raise PromotionRefusedError(
            f"{model_dir} is not promoted: {report.reason}. Train on more data or for longer "
            "(`agentgraph distill train --epochs`), or lower --threshold if that agreement is enough for this node."
        )
    return record


class ClassifierGateReport(GateVerdict):
    """What :func:`gate_classifier` measured: the candidate's and the current classifier's routing of the rows."""

    candidate: RouterEvaluation
    current: RouterEvaluation | None

    def promotion_figures(self) -> dict[str, Any]:
        current = self.current
        return {
            "coverage": self.candidate.coverage, "selective_accuracy": self.candidate.selective_accuracy,
            "current_coverage": None if current is None else current.coverage,
            "current_selective_accuracy": None if current is None else current.selective_accuracy,
        }  # fmt: skip


def gate_classifier(
    model_dir: str | os.PathLike[str],
    rows: Sequence[tuple[str, str]],
    *,
    current: str | os.PathLike[str] | None = None,
    min_accuracy: float = CLASSIFIER_MIN_ACCURACY,
    max_error_rise: float = CLASSIFIER_MAX_ERROR_RISE,
) -> ClassifierGateReport:
    """Gate the classifier in ``model_dir`` on ``(text, label)`` rows it was not trained on, and record the decision.

    Both classifiers route the rows alone (no rules, no teacher), one at a time. Accepted when the
    candidate's selective accuracy (right among what it answers) reaches ``min_accuracy`` and, against a
    ``current`` classifier, it answers at least as many rows (coverage) while its wrong answers, as a
    share of all rows, exceed the current one's by at most ``max_error_rise``: comparing selective
    accuracies alone would prefer a classifier that answers almost nothing. The decision goes into the
    candidate's manifest (:func:`promote`); a refusal raises :class:`PromotionRefusedError`.
    """
    if not rows:
        raise DistillError("gate_classifier needs held-out labelled rows to gate on")
    classifier = IntentClassifier.load(model_dir)

    def routed(loaded: IntentClassifier) -> RouterEvaluation:
        return evaluate_router(Router([ClassifierStrategy(loaded)]), rows)

    def wrong(evaluation: RouterEvaluation) -> float:
        return (evaluation.coverage or 0.0) * (1.0 - (evaluation.selective_accuracy or 0.0))

    candidate = routed(classifier)
    baseline = routed(IntentClassifier.load(current, encoder=classifier.encoder)) if current is not None else None
    accuracy, coverage = candidate.selective_accuracy or 0.0, candidate.coverage or 0.0
    if accuracy < min_accuracy:
        decision, reason = "refused", f"selective accuracy {accuracy:.4f} < threshold {min_accuracy:.4f}"
    elif baseline is not None and coverage < (baseline.coverage or 0.0):
        decision, reason = "refused", f"coverage {coverage:.4f} < the current classifier's {baseline.coverage:.4f}"
    elif baseline is not None and wrong(candidate) > wrong(baseline) + max_error_rise:
        decision = "refused"
        reason = (
            f"wrong answers {wrong(candidate):.4f} > the current classifier's {wrong(baseline):.4f} + {max_error_rise}"
        )
    else:
        decision = "accepted"
        reason = f"selective accuracy {accuracy:.4f}, coverage {coverage:.4f}, wrong answers {wrong(candidate):.4f}"
        if baseline is not None:
            reason += (
                f"; the current classifier's {baseline.selective_accuracy or 0.0:.4f}, "
                f"{baseline.coverage or 0.0:.4f}, {wrong(baseline):.4f}"
            )
    report = ClassifierGateReport(
        model_dir=str(model_dir), data_dir="(rows given to gate_classifier)",
        dataset_sha256=hashlib.sha256(json.dumps(list(rows)).encode()).hexdigest(), dataset_matches=True,
        test_rows=len(rows), agreement=accuracy, threshold=min_accuracy, decision=decision, reason=reason,
        candidate=candidate, current=baseline,
    )  # fmt: skip
    with suppress(PromotionRefusedError):
        promote(model_dir, report)
    if not report.passed:
        raise PromotionRefusedError(f"{model_dir} is not promoted: {reason}", report=report)
    return report
