"""Calibrators (fast, synthetic scores) and the trained intent classifier (slow: real encoder, real training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from agentgraph.calibration import (
    AnyCalibrator,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    expected_calibration_error,
    selective_accuracy_at_coverage,
    selective_threshold,
)
from agentgraph.errors import AgentGraphError

KEPT_INTENTS = ("cancel_order", "track_order", "get_refund", "recover_password", "delivery_period", "check_invoice")
UNRELATED = [
    "What's the weather going to be like in Lisbon tomorrow?",
    "Can you write me a short poem about autumn leaves?",
    "How do I center a div in CSS?",
    "Who won the football world cup in 2010?",
    "Give me a recipe for vegan lasagna.",
]


def overconfident(n: int = 2000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is far surer than the labels warrant."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.0, 1.5, (n, classes))
    probabilities = np.exp(honest) / np.exp(honest).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return 3.0 * honest, labels  # three times too sharp: the right temperature is 3


def test_temperature_scaling_softens_overconfident_logits_and_lowers_calibration_error():
    logits, labels = overconfident()
    scaler = TemperatureScaling().fit(logits, labels)
    correct = logits.argmax(1) == labels
    assert 2.5 < scaler.temperature < 3.5
    assert expected_calibration_error(scaler.confidence(logits), correct) < 0.5 * expected_calibration_error(
        TemperatureScaling().confidence(logits), correct
    )
    probabilities = scaler.transform(logits)
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert (probabilities.argmax(1) == logits.argmax(1)).all()  # calibration never changes the decision


@pytest.mark.parametrize("calibrator", [PlattScaling(), IsotonicCalibration()])
def test_top_label_calibrators_lower_calibration_error_and_stay_monotone(calibrator):
    logits, labels = overconfident(seed=1)
    held_logits, held_labels = overconfident(seed=2)
    calibrator.fit_logits(logits, labels)
    held_correct = held_logits.argmax(1) == held_labels
    before = expected_calibration_error(TemperatureScaling().confidence(held_logits), held_correct)
    assert expected_calibration_error(calibrator.confidence(held_logits), held_correct) < 0.5 * before
    grid = np.linspace(0.2, 1.0, 50)
    assert (np.diff(calibrator.transform(grid)) >= -1e-12).all()


@pytest.mark.parametrize("calibrator", [TemperatureScaling(), PlattScaling(), IsotonicCalibration()])
def test_calibrators_round_trip_through_json(calibrator):
    logits, labels = overconfident(seed=3)
    calibrator.fit_logits(logits, labels)
    restored = TypeAdapter(AnyCalibrator).validate_json(calibrator.model_dump_json())
    assert type(restored) is type(calibrator)
    np.testing.assert_allclose(restored.confidence(logits), calibrator.confidence(logits))


def test_selective_threshold_reaches_the_target_within_the_rejection_cap():
    confidences = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.90, 0.80, 0.70, 0.60, 0.50])
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    # 100% needs the 7 surest: allowed when up to 30% may be rejected.
    assert selective_threshold(confidences, correct, target_accuracy=1.0, max_rejection=0.3) == 0.80
    # With at most 10% rejected, coverage wins: 9 accepted, gate at the 9th confidence.
    assert selective_threshold(confidences, correct, target_accuracy=1.0, max_rejection=0.1) == 0.60


def test_selective_accuracy_at_coverage_keeps_the_most_confident_share():
    confidences = np.array([0.50, 0.99, 0.70, 0.98, 0.97, 0.96, 0.95, 0.90, 0.80, 0.60])
    correct = np.array([0, 1, 0, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    assert selective_accuracy_at_coverage(confidences, correct, 0.7) == 1.0  # the 7 surest are right
    assert selective_accuracy_at_coverage(confidences, correct, 0.8) == 7 / 8  # the 8th (0.70) is wrong
    assert selective_accuracy_at_coverage(confidences, correct, 1.0) == 0.8


@pytest.fixture(scope="module")
def encoder():
    from agentgraph.classifier import SentenceEncoder

    return SentenceEncoder()


def test_canonical_text_turns_every_digit_run_into_one_placeholder():
    from agentgraph.classifier import canonical_text

    assert canonical_text("track order 3707955617") == canonical_text("track order 10001") == "track order number"
    assert canonical_text("bill #00108, refund of $1,200") == "bill #number, refund of $number,number"
    assert canonical_text("where is my parcel?") == "where is my parcel?"


def test_char_ngram_tfidf_computes_what_sklearn_computes():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from agentgraph.classifier import CharNgramTfidf

    corpus = ["cancel order number", "cancel my order", "where is my order?", "reset my password", "resset pasword"]
    queries = [*corpus, "an unseen request, with typoes", "", "ünïcödé ✓"]
    reference = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2).fit(corpus)
    features = CharNgramTfidf.fit(corpus)
    np.testing.assert_allclose(
        features.transform(queries).toarray(), reference.transform(queries).toarray(), atol=1e-12
    )


@pytest.fixture(scope="module")
def small_classifier(encoder, support_splits):
    """Six intents from six categories: the other 21 intents are out of scope for it."""
    from agentgraph.classifier import IntentClassifier

    rows = [r for r in support_splits["train"] + support_splits["dev"] if r.intent in KEPT_INTENTS]
    return IntentClassifier.train([r.text for r in rows], [r.intent for r in rows], encoder=encoder)


@pytest.mark.slow
def test_float_onnx_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from agentgraph.classifier import SentenceEncoder, packaged_encoder_folder

    encoder = SentenceEncoder(precision="fp32")
    texts = ["where is my order 12345?", "I want my money back", "a much longer request " * 20]
    reference = SentenceTransformer(str(packaged_encoder_folder()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(encoder.encode(texts), reference, atol=1e-4)
    np.testing.assert_allclose(encoder.encode_one(texts[0]), reference[0], atol=1e-4)
    assert encoder.count_tokens("where is my order?") == 7  # [CLS] where is my order ? [SEP]
    assert encoder.name == "all-MiniLM-L6-v2"


@pytest.mark.slow
def test_int8_encoder_stays_close_to_the_float_one_and_ignores_batch_mates(encoder, support_splits):
    from agentgraph.classifier import SentenceEncoder

    texts = [r.text for r in support_splits["test"][::40]] + ["a much longer request " * 20]
    quantised = encoder.encode(texts)
    assert encoder.name == "all-MiniLM-L6-v2-int8"
    assert ((quantised * SentenceEncoder(precision="fp32").encode(texts)).sum(1) >= 0.98).all()
    # Training encodes many texts, routing one: both must see the same embedding of a text.
    np.testing.assert_array_equal(quantised[3], encoder.encode_one(texts[3]))


@pytest.mark.slow
def test_small_classifier_classifies_held_out_requests_and_escalates_other_intents(small_classifier, support_splits):
    test = support_splits["test"]
    kept = [r for r in test if r.intent in KEPT_INTENTS][:120]
    predictions = [small_classifier.predict(r.text) for r in kept]
    assert np.mean([p.label == r.intent for p, r in zip(predictions, kept, strict=False)]) >= 0.97
    assert np.mean([p.accepted for p in predictions]) >= 0.9
    # Whole categories it never saw, and other domains, are out of scope; a softmax alone would pick a label.
    unseen = [r for r in test if r.category in ("NEWSLETTER", "FEEDBACK", "CONTACT")][:100]
    assert np.mean([not small_classifier.predict(r.text).in_scope for r in unseen]) >= 0.9
    assert all(not small_classifier.predict(text).in_scope for text in UNRELATED)


@pytest.mark.slow
def test_saved_classifier_loads_without_pickles_and_predicts_the_same(small_classifier, encoder, tmp_path):
    from agentgraph.classifier import IntentClassifier

    folder = small_classifier.save(tmp_path / "router")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["labels"] == sorted(KEPT_INTENTS)
    assert manifest["encoder"] == "all-MiniLM-L6-v2-int8"
    assert {"out_of_fold_accuracy", "out_of_fold_coverage"} <= set(manifest["metrics"])
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        assert arrays["weights"].shape == (6, 384)
    restored = IntentClassifier.load(folder, encoder=encoder)
    for text in ["cancel order 12345", "I forgot my password", UNRELATED[0]]:
        assert restored.predict(text) == small_classifier.predict(text)
    assert restored.predict("cancel order 12345") == restored.predict("cancel order 3707955617")  # ids never matter


@pytest.mark.slow
def test_loading_with_an_encoder_of_another_precision_is_refused(small_classifier, tmp_path):
    from agentgraph.classifier import IntentClassifier, SentenceEncoder

    folder = small_classifier.save(tmp_path / "router")
    with pytest.raises(AgentGraphError, match="trained on all-MiniLM-L6-v2-int8 embeddings"):
        IntentClassifier.load(folder, encoder=SentenceEncoder(precision="fp32"))


@pytest.mark.slow
def test_training_refuses_labels_with_fewer_examples_than_folds(encoder):
    from agentgraph.classifier import IntentClassifier

    with pytest.raises(AgentGraphError, match=r"\['y'\] have fewer than 5 examples"):
        IntentClassifier.train(["a"] * 5 + ["b"] * 4, ["x"] * 5 + ["y"] * 4, encoder=encoder)


def test_a_cached_classifier_is_retrained_when_its_format_or_data_changed_and_kept_when_current(tmp_path, caplog):
    caplog.set_level("INFO", logger="agentgraph.preparation")
    import agentgraph.classifier as classifier_module
    from agentgraph.calibration import TemperatureScaling

    folder = tmp_path / "router"
    current = classifier_module.ClassifierManifest(
        encoder="all-MiniLM-L6-v2-int8",
        labels=["x"],
        temperature=TemperatureScaling(),
        gate_threshold=0.5,
        out_of_scope=classifier_module.OutOfScopeDetector(
            min_similarity=0.5, max_relative_distance=1.0, rejection_rate=0.01
        ),
        regularization=1.0,
        lexical_weight=0.3,
        folds=5,
    )
    retrained: list[Path] = []

    class Trained:  # stands in for the minutes-long training; the staleness check is what is under test
        manifest = current

        def save(self, target: Path) -> Path:
            retrained.append(target)
            target.mkdir(parents=True, exist_ok=True)
            (target / "manifest.json").write_text(self.manifest.model_dump_json())
            return target

    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({**current.model_dump(mode="json"), "format_version": 2}))
    assert classifier_module.cached_classifier(folder, "data-1", Trained) == folder and retrained == [folder]
    assert classifier_module.cached_classifier(folder, "data-1", Trained) == folder and retrained == [folder]  # kept
    assert classifier_module.cached_classifier(folder, "data-2", Trained) == folder and len(retrained) == 2  # new data
    announced = [r.getMessage() for r in caplog.records if r.name == "agentgraph.preparation"]
    assert announced == [f"first use: training the classifier {folder} (once)"] * 2  # a folder outside the cache


def test_loading_a_folder_that_is_not_a_classifier_says_so(tmp_path):
    from agentgraph.classifier import IntentClassifier

    with pytest.raises(AgentGraphError, match="not a saved classifier"):
        IntentClassifier.load(tmp_path)
