"""Drift: is the router's traffic still the traffic it was trained on? If not, a retrain signal.

A :class:`DriftReference` is built once from a curated route dataset
(``agentgraph distill dataset --role route``), keyed by its sha256: the MiniLM
embeddings of the train inputs, the same novelty score (below) for a held-out
split, and the router's baseline on that held-out split: its confidence
distribution and out-of-scope rate (the split routed by the router, or given).
It is saved as ``reference.json`` and ``arrays.npz`` (no pickles).

A window of the router's recent route decisions (the last N, or those in a time
range; empty-input rejections left out) is then compared with it on three
signals, each with a threshold in :class:`DriftThresholds`:

- **Out-of-scope rate**: the share of decisions with outcome ``out_of_scope``.
  Retrain when it exceeds the baseline's by more than
  ``out_of_scope_rate_increase`` (absolute; default 0.10).
- **Confidence shift**: the population stability index of the calibrated
  confidences against the baseline's, over the fixed bins
  :data:`CONFIDENCE_EDGES` (finer towards 1, where a calibrated router's
  confidences sit), each bin's share smoothed (:data:`PSI_SMOOTHING`). PSI is
  ``sum((w - b) * ln(w / b))`` over the bin shares; 0.25 is the customary
  "significant shift" (default threshold). The mean confidence is reported
  beside it.
- **Embedding distance**: each input (as the classifier reads it,
  :func:`~agentgraph.classifier.canonical_text`, embedded by the int8 MiniLM
  :class:`~agentgraph.classifier.SentenceEncoder`) gets a novelty score, the
  mean cosine distance to its :data:`NEIGHBOURS` nearest training inputs. An
  absolute distance means nothing across encoders and datasets, so both figures
  are relative to the held-out split, whose inputs come from the training
  distribution but are not in the training set (curation removes near
  duplicates across splits): the ratio of the window's mean score to the
  held-out mean (about 1 in distribution; default threshold 1.5), and the share
  of the window scoring above the held-out :data:`NOVELTY_QUANTILE` quantile
  (0.05 in distribution by construction; default threshold 0.15). The ratio
  sees traffic moving as a whole, the share a new kind of request arriving
  beside the old ones.

A window smaller than ``min_decisions`` is reported but raises no signal: it is
too small to tell drift from noise. :func:`monitor_drift` writes each report to
the decision log as ``Decision(node=<router>, kind="drift", input={"window",
"since", "until"}, output=<report>, outcome="retrain" | "ok")`` and logs a
warning on a retrain signal; ``agentgraph distill drift`` prints it and exits
with status 3 on one.

Example:
    >>> from agentgraph.distill.drift import DriftThresholds, population_stability_index
    >>> baseline = [0.99] * 90 + [0.9] * 10
    >>> round(population_stability_index(baseline, baseline), 3)
    0.0
    >>> population_stability_index([0.55] * 50 + [0.99] * 50, baseline) > DriftThresholds().confidence_psi
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.classifier import canonical_text
from agentgraph.errors import AgentGraphError
from agentgraph.records.decisions import Decision, DecisionLog
from agentgraph.slm.models import cache_dir

if TYPE_CHECKING:
    from agentgraph.classifier import SentenceEncoder
    from agentgraph.distill.dataset import TextEncoder
    from agentgraph.distill.train import RouteDataset
    from agentgraph.routing import Router

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever a saved reference changes meaning; older ones are rebuilt, never misread."""
NEIGHBOURS = 5
"""Training inputs a novelty score averages over: one nearest neighbour is noisier (a lone template can be close)."""
NOVELTY_QUANTILE = 0.95
CONFIDENCE_EDGES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PSI_SMOOTHING = 0.005
"""Added to every bin's share on both sides (then renormalised): a bin empty on both sides adds nothing, one empty
on one side a bounded term, not infinity. A pseudo-count would not do: it weighs more in the smaller sample, and on
a window of 50 the empty bins alone would add about 0.1."""
OUT_OF_SCOPE = "out_of_scope"
"""The outcome the router records for an out-of-scope request (its escalation reason)."""
RETRAIN = "retrain"
_INFO = "reference.json"
_ARRAYS = "arrays.npz"
HeldOutSplit = Literal["dev", "test"]


class DriftError(AgentGraphError):
    """Drift cannot be measured as asked (the message says what to give it)."""


class DriftThresholds(BaseModel):
    """Where each drift signal starts asking for a retrain; crossing any one of them does."""

    out_of_scope_rate_increase: float = Field(
        default=0.10, gt=0, le=1, description="out-of-scope rate above the baseline's, in absolute terms"
    )
    confidence_psi: float = Field(default=0.25, gt=0, description="population stability index of the confidences")
    embedding_distance_ratio: float = Field(
        default=1.5, gt=1, description="mean novelty score of the window over that of the held-out split"
    )
    novel_input_share: float = Field(
        default=0.15, gt=0, le=1, description="share of the window more novel than 95% of the held-out split"
    )
    min_decisions: int = Field(default=50, ge=1, description="a smaller window raises no signal")

    def crossed(self, metrics: DriftMetrics) -> list[str]:
        """The names of the thresholds ``metrics`` exceed."""
        values = {
            "out_of_scope_rate_increase": metrics.out_of_scope_rate - metrics.baseline_out_of_scope_rate,
            "confidence_psi": metrics.confidence_psi,
            "embedding_distance_ratio": metrics.embedding_distance_ratio,
            "novel_input_share": metrics.novel_input_share,
        }
        return [name for name, value in values.items() if value is not None and value > getattr(self, name)]


class DriftMetrics(BaseModel):
    """The three signals of one window, each beside its baseline."""

    out_of_scope_rate: float
    baseline_out_of_scope_rate: float
    confidence_psi: float | None = Field(description="None when no decision in the window has a confidence")
    confidence_mean: float | None
    baseline_confidence_mean: float
    embedding_distance: float = Field(description="mean novelty score: cosine distance to the nearest training inputs")
    baseline_embedding_distance: float = Field(description="the same over the held-out split")
    embedding_distance_ratio: float
    novel_input_share: float


class DriftReport(BaseModel):
    """One drift check: the window, its metrics, the thresholds crossed and whether to retrain."""

    node: str
    dataset_sha256: str | None
    window: int = Field(description="route decisions in the window")
    since: datetime
    until: datetime
    metrics: DriftMetrics
    thresholds: DriftThresholds
    crossed: list[str] = Field(description="the thresholds exceeded (also listed when the window is too small)")
    enough_data: bool = Field(description="the window holds at least min_decisions decisions")
    retrain: bool


class ReferenceInfo(BaseModel):
    """What a reference was built from; saved as ``reference.json``."""

    format_version: int = FORMAT_VERSION
    dataset_sha256: str | None
    encoder: str
    neighbours: int = NEIGHBOURS
    train_inputs: int
    heldout_inputs: int
    heldout_split: str | None = Field(description="the dataset split the held-out inputs came from, if any")
    baseline_source: str = Field(description="how the baseline confidences and out-of-scope rate were obtained")
    baseline_out_of_scope_rate: float
    confidence_edges: list[float] = Field(default_factory=lambda: list(CONFIDENCE_EDGES))
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def population_stability_index(
    values: Iterable[float], baseline: Iterable[float], *, edges: Sequence[float] = CONFIDENCE_EDGES
) -> float:
    """PSI of ``values`` against ``baseline`` over the bins ``edges`` (the last bin includes its upper edge)."""
    bins = np.asarray(edges, dtype=float)
    counts = [
        np.histogram(np.clip(np.fromiter(side, float), bins[0], bins[-1]), bins)[0] for side in (values, baseline)
    ]
    window, reference = ((count / count.sum() + PSI_SMOOTHING) / (1 + PSI_SMOOTHING * len(count)) for count in counts)
    return float(((window - reference) * np.log(window / reference)).sum())


def novelty_scores(
    embeddings: np.ndarray, train_embeddings: np.ndarray, *, neighbours: int = NEIGHBOURS, block: int = 1024
) -> np.ndarray:
    """Each embedding's mean cosine distance to its ``neighbours`` nearest training embeddings (all L2-normalised)."""
    scores = np.empty(len(embeddings), dtype=np.float32)
    for start in range(0, len(embeddings), block):  # bounded memory: one block of similarities at a time
        similarities = embeddings[start : start + block] @ train_embeddings.T
        nearest = -np.partition(-similarities, neighbours - 1, axis=1)[:, :neighbours]
        scores[start : start + block] = 1.0 - nearest.mean(axis=1)
    return scores


class DriftReference:
    """The training set as drift is measured against it: embeddings, held-out novelty scores, the router's baseline."""

    def __init__(
        self,
        info: ReferenceInfo,
        train_embeddings: np.ndarray,
        heldout_scores: np.ndarray,
        baseline_confidences: np.ndarray,
    ) -> None:
        self.info = info
        self.train_embeddings = train_embeddings
        self.heldout_scores = heldout_scores
        self.baseline_confidences = baseline_confidences

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        return novelty_scores(embeddings, self.train_embeddings, neighbours=self.info.neighbours)

    def save(self, folder: str | Path) -> Path:
        """Write ``reference.json`` and ``arrays.npz`` to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / _ARRAYS, train_embeddings=self.train_embeddings, heldout_scores=self.heldout_scores,
                 baseline_confidences=self.baseline_confidences)  # fmt: skip
        # The JSON last: a folder with it is complete (load checks for it).
        (folder / _INFO).write_text(self.info.model_dump_json(indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DriftReference:
        folder = Path(folder)
        if not (folder / _INFO).is_file() or not (folder / _ARRAYS).is_file():
            raise DriftError(
                f"{folder} holds no drift reference; build one with build_dataset_reference or `agentgraph distill drift`"
            )
        info = ReferenceInfo.model_validate_json((folder / _INFO).read_text(encoding="utf-8"))
        if info.format_version != FORMAT_VERSION:
            raise DriftError(
                f"{folder} is a format {info.format_version} drift reference; rebuild it (--rebuild-reference)"
            )
        with np.load(folder / _ARRAYS, allow_pickle=False) as arrays:
            return cls(info, arrays["train_embeddings"], arrays["heldout_scores"], arrays["baseline_confidences"])


def default_encoder() -> SentenceEncoder:
    from agentgraph.classifier import SentenceEncoder

    return SentenceEncoder()


def encoder_name(encoder: TextEncoder) -> str:
    return getattr(encoder, "name", type(encoder).__name__)


def embed(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    return encoder.encode([canonical_text(text) for text in texts]).astype(np.float32)


def build_reference(
    train_texts: Sequence[str],
    heldout_texts: Sequence[str],
    *,
    router: Router | None = None,
    baseline_confidences: Sequence[float] | None = None,
    baseline_out_of_scope_rate: float | None = None,
    encoder: TextEncoder | None = None,
    dataset_sha256: str | None = None,
    heldout_split: str | None = None,
) -> DriftReference:
    """A reference from training inputs and held-out inputs of the same distribution.

    The baseline comes from ``router`` routing ``heldout_texts`` (use inputs it
    was not trained or calibrated on: its confidences on its own training data
    are higher than on new traffic), or is given as ``baseline_confidences`` and
    ``baseline_out_of_scope_rate``.
    """
    if (router is None) == (baseline_confidences is None or baseline_out_of_scope_rate is None):
        raise DriftError(
            "give either a router to route the held-out inputs or both baseline_confidences and baseline_out_of_scope_rate"
        )
    train_texts = list(dict.fromkeys(train_texts))  # oversampled copies would count one input several times
    if len(train_texts) < NEIGHBOURS or not heldout_texts:
        raise DriftError(
            f"a drift reference needs at least {NEIGHBOURS} distinct training inputs and some held-out ones "
            f"(got {len(train_texts)} and {len(heldout_texts)}); build the dataset from more data"
        )
    if router is not None:
        verdicts = [router.decide(text) for text in heldout_texts]
        baseline_confidences = [v.confidence for v in verdicts if v.confidence is not None]
        baseline_out_of_scope_rate = float(np.mean([v.reason == OUT_OF_SCOPE for v in verdicts]))
        strategies = sorted({f"{v.strategy} ({v.model})" if v.model else v.strategy for v in verdicts if v.strategy})
        source = f"the {heldout_split or 'held-out'} inputs routed by {', '.join(strategies)}"
    else:
        assert baseline_out_of_scope_rate is not None  # without a router, the first check demanded both baselines
        source = "given"
    encoder = encoder or default_encoder()
    train_embeddings = embed(encoder, train_texts)
    info = ReferenceInfo(
        dataset_sha256=dataset_sha256, encoder=encoder_name(encoder), train_inputs=len(train_texts),
        heldout_inputs=len(heldout_texts), heldout_split=heldout_split, baseline_source=source,
        baseline_out_of_scope_rate=baseline_out_of_scope_rate,
    )  # fmt: skip
    heldout_scores = novelty_scores(embed(encoder, heldout_texts), train_embeddings)
    return DriftReference(info, train_embeddings, heldout_scores, np.asarray(baseline_confidences, dtype=np.float32))


def reference_folder(dataset_sha256: str, split: HeldOutSplit) -> Path:
    """Where the reference of a dataset (by its sha256) and held-out split is kept: the user cache."""
    return cache_dir() / "artifacts" / "drift" / dataset_sha256 / split


def cached_reference(dataset_sha256: str, split: HeldOutSplit) -> DriftReference | None:
    """The saved reference of a dataset and split, or None when there is none of this format."""
    folder = reference_folder(dataset_sha256, split)
    try:
        return DriftReference.load(folder)
    except (DriftError, OSError, ValueError):
        return None


def build_dataset_reference(
    dataset: RouteDataset,
    *,
    split: HeldOutSplit = "test",
    router: Router | None = None,
    baseline_confidences: Sequence[float] | None = None,
    baseline_out_of_scope_rate: float | None = None,
    encoder: TextEncoder | None = None,
) -> DriftReference:
    """The reference of a curated route dataset (``load_route_dataset``), saved in :func:`reference_folder`.

    ``split`` is the held-out split; the default, test, is the one no router
    trains or calibrates on (the packaged classifier trains on train and dev, a
    distilled SLM fits its gate on dev).
    """
    reference = build_reference(
        [text for text, _ in dataset.splits["train"]], [text for text, _ in dataset.splits[split]], router=router,
        baseline_confidences=baseline_confidences, baseline_out_of_scope_rate=baseline_out_of_scope_rate,
        encoder=encoder, dataset_sha256=dataset.sha256, heldout_split=split,
    )  # fmt: skip
    reference.save(reference_folder(dataset.sha256, split))
    return reference


def route_window(
    log: DecisionLog,
    *,
    node: str = "router",
    last: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Decision]:
    """The route decisions of ``node`` in ``[since, until)``, the ``last`` N of them when given, oldest first."""
    window = [
        d for d in log.decisions(node=node, kind="route")
        if d.outcome != "rejected" and isinstance(d.input, str)
        and (since is None or d.timestamp >= since) and (until is None or d.timestamp < until)
    ]  # fmt: skip
    return window[-last:] if last else window


def check_drift(
    reference: DriftReference,
    decisions: Sequence[Decision],
    *,
    encoder: TextEncoder | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Compare a window of route decisions (:func:`route_window`) with ``reference``."""
    if not decisions:
        raise DriftError(
            "the window holds no route decisions: check the node name, widen the window or route some requests first"
        )
    encoder = encoder or default_encoder()
    if encoder_name(encoder) != reference.info.encoder:
        raise DriftError(
            f"the reference holds {reference.info.encoder} embeddings; measure with that encoder, not {encoder_name(encoder)}"
        )
    thresholds = thresholds or DriftThresholds()
    window_scores = reference.novelty(embed(encoder, [d.input for d in decisions]))
    heldout_mean = float(reference.heldout_scores.mean())
    confidences = [d.confidence for d in decisions if d.confidence is not None]
    edges = reference.info.confidence_edges
    psi = population_stability_index(confidences, reference.baseline_confidences, edges=edges) if confidences else None
    metrics = DriftMetrics(
        out_of_scope_rate=float(np.mean([d.outcome == OUT_OF_SCOPE for d in decisions])),
        baseline_out_of_scope_rate=reference.info.baseline_out_of_scope_rate,
        confidence_psi=psi,
        confidence_mean=float(np.mean(confidences)) if confidences else None,
        baseline_confidence_mean=float(reference.baseline_confidences.mean()),
        embedding_distance=float(window_scores.mean()),
        baseline_embedding_distance=heldout_mean,
        embedding_distance_ratio=float(window_scores.mean()) / heldout_mean,
        novel_input_share=float((window_scores > np.quantile(reference.heldout_scores, NOVELTY_QUANTILE)).mean()),
    )
    crossed = thresholds.crossed(metrics)
    enough_data = len(decisions) >= thresholds.min_decisions
    return DriftReport(
        node=decisions[0].node, dataset_sha256=reference.info.dataset_sha256, window=len(decisions),
        since=decisions[0].timestamp, until=decisions[-1].timestamp, metrics=metrics, thresholds=thresholds,
        crossed=crossed, enough_data=enough_data, retrain=enough_data and bool(crossed),
    )  # fmt: skip


def drift_decision(report: DriftReport) -> Decision:
    """The report as the decision log keeps it."""
    return Decision(
        node=report.node,
        kind="drift",
        input={"window": report.window, "since": report.since.isoformat(), "until": report.until.isoformat()},
        output=report.model_dump(mode="json"),
        outcome=RETRAIN if report.retrain else "ok",
    )


def monitor_drift(
    log: DecisionLog,
    reference: DriftReference,
    *,
    node: str = "router",
    window: int | None = 200,
    since: datetime | None = None,
    until: datetime | None = None,
    encoder: TextEncoder | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Check the last ``window`` route decisions of ``node`` (in ``[since, until)``), record the report in ``log``.

    A retrain signal is also logged as a warning.
    """
    decisions = route_window(log, node=node, last=window, since=since, until=until)
    report = check_drift(reference, decisions, encoder=encoder, thresholds=thresholds)
    log.record(drift_decision(report))
    if report.retrain:
        logger.warning("retrain signal for %s: %s over the last %d decisions (%s)", node, ", ".join(report.crossed),
                       report.window, json.dumps(report.metrics.model_dump(), sort_keys=True))  # fmt: skip
    return report
