"""Confidence calibration: turn a model's scores into probabilities that mean what they say.

Three calibrators with one ``fit(scores, labels)`` / ``transform(scores)`` API,
fitted on a labelled dev set and saved as JSON (they are pydantic models):

- :class:`TemperatureScaling` rescales multi-class logits (``scores`` is an
  ``(n, k)`` array, ``labels`` the true class indices) and returns a
  distribution over the ``k`` classes.
- :class:`PlattScaling` (a sigmoid) and :class:`IsotonicCalibration`
  (monotone, non-parametric) map one score per item (``(n,)``) to the
  probability that the item is correct (``labels`` are 0/1).

Every calibrator also offers :meth:`Calibrator.fit_logits` and
:meth:`Calibrator.confidence`, which work on logits for any of the three, so a
node can take whichever calibrator its user chooses. :func:`selective_threshold`
picks the confidence gate from the same dev set.

Example:
    >>> import numpy as np
    >>> from agentgraph.calibration import TemperatureScaling, expected_calibration_error
    >>> rng = np.random.default_rng(0)
    >>> honest = rng.normal(0.0, 1.5, (2000, 3))
    >>> labels = np.array([rng.choice(3, p=p) for p in np.exp(honest) / np.exp(honest).sum(1, keepdims=True)])
    >>> logits = 3.0 * honest  # scores three times too sure of themselves
    >>> scaler = TemperatureScaling().fit(logits, labels)
    >>> round(scaler.temperature)
    3
    >>> raw = expected_calibration_error(TemperatureScaling().confidence(logits), logits.argmax(1) == labels)
    >>> fitted = expected_calibration_error(scaler.confidence(logits), logits.argmax(1) == labels)
    >>> bool(fitted < raw)
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


class Calibrator(BaseModel, ABC):
    """A fitted map from scores to calibrated probabilities."""

    @abstractmethod
    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Calibrator: ...

    @abstractmethod
    def transform(self, scores: np.ndarray) -> np.ndarray: ...

    def fit_logits(self, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Fit from multi-class ``logits`` ``(n, k)`` and true class indices ``labels``."""
        logits = np.asarray(logits, dtype=np.float64)
        top = softmax(logits).max(axis=1)
        return self.fit(top, logits.argmax(axis=1) == np.asarray(labels))

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability that the argmax of each row of ``logits`` is right."""
        return self.transform(softmax(np.atleast_2d(logits)).max(axis=1))


class TemperatureScaling(Calibrator):
    """``softmax(logits / T)`` with the ``T`` that minimises the dev set's negative log-likelihood."""

    kind: Literal["temperature"] = "temperature"
    temperature: float = 1.0

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        from scipy.optimize import minimize_scalar

        logits = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)

        def nll(log_t: float) -> float:
            scaled = logits / np.exp(log_t)
            scaled = scaled - scaled.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(scaled).sum(axis=1))
            return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))

        # Temperatures outside [e^-5, e^5] mean broken scores, not a calibration.
        self.temperature = float(np.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x))
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(scores, dtype=np.float64) / self.temperature)

    def fit_logits(self, logits: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        return self.fit(logits, labels)

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        return self.transform(np.atleast_2d(logits)).max(axis=1)


class PlattScaling(Calibrator):
    """``sigmoid(slope * score + intercept)``, a one-feature logistic regression on correctness."""

    kind: Literal["platt"] = "platt"
    slope: float = 1.0
    intercept: float = 0.0

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> PlattScaling:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e6).fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), np.asarray(labels))
        self.slope, self.intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * np.asarray(scores, dtype=np.float64) + self.intercept)))


class IsotonicCalibration(Calibrator):
    """A monotone step function from score to accuracy, kept as its breakpoints (clipped at the ends)."""

    kind: Literal["isotonic"] = "isotonic"
    scores: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    probabilities: list[float] = Field(default_factory=lambda: [0.0, 1.0])

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        model.fit(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64))
        self.scores = model.X_thresholds_.tolist()
        self.probabilities = model.y_thresholds_.tolist()
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.scores, self.probabilities)


AnyCalibrator = Annotated[TemperatureScaling | PlattScaling | IsotonicCalibration, Field(discriminator="kind")]
"""Any calibrator, as a field of a saved model (the ``kind`` key tells which)."""


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, *, bins: int = 10) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted by bin size."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(confidences[members].mean() - correct[members].mean())
    return float(error)


def selective_accuracy_at_coverage(confidences: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy over the ``coverage`` share of items with the highest confidence (a point of the risk-coverage curve).

    This ranks held-out items by their own confidences: it says how good the
    confidence ordering is, whatever gate a dev set would fit.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    kept = max(1, int(np.ceil(coverage * len(confidences) - 1e-9)))
    order = np.argsort(-confidences, kind="stable")
    return float(correct[order[:kept]].mean())


def selective_threshold(
    confidences: np.ndarray, correct: np.ndarray, *, target_accuracy: float, max_rejection: float
) -> float:
    """The lowest confidence gate whose accepted dev items reach ``target_accuracy``.

    The gate never rejects more than ``max_rejection`` of the dev set: when the
    target needs more, coverage wins and the gate sits at that quantile.
    Items at or above the returned value are accepted.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidences)
    accepted_correct = np.cumsum(correct[order])
    accuracy = accepted_correct / np.arange(1, len(order) + 1)
    # The epsilon keeps float noise (0.7 * 10 = 7.000000000000001) from costing one item of coverage.
    least_accepted = int(np.ceil((1.0 - max_rejection) * len(order) - 1e-9))
    meets = np.flatnonzero(accuracy >= target_accuracy)
    accepted = max(int(meets[-1]) + 1 if len(meets) else 0, least_accepted)
    return float(confidences[order][max(accepted, 1) - 1])
