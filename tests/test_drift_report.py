"""Drift monitoring and ``agentgraph report``, on real SQLite trace stores, real MiniLM embeddings and Bitext requests.

The router's confidences are drawn from fixed distributions (the embedded
classifier is slow to build, see tests/test_router.py): in distribution, a
calibrated router's (most above 0.99); collapsed, spread over 0.35-0.9. Every
other figure is measured for real.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agentgraph.classifier import SentenceEncoder, encoder_onnx_folder
from agentgraph.cli import main
from agentgraph.distill.drift import (
    DriftError,
    DriftMetrics,
    DriftReference,
    DriftReport,
    DriftThresholds,
    build_dataset_reference,
    build_reference,
    check_drift,
    drift_decision,
    monitor_drift,
    route_window,
)
from agentgraph.distill.report import build_report, requests_using_llm
from agentgraph.distill.train import load_route_dataset
from agentgraph.records.decisions import Decision
from agentgraph.records.traces import LLMCall, SQLiteTraceStore

OFF_TOPIC = [
    "What's the weather in Lisbon tomorrow?", "Will it rain in Paris this weekend?", "How hot will it get in Madrid on Friday?",
    "Is there a storm warning for the coast tonight?", "what is the forecast for Berlin next week",
    "Should I bring an umbrella to work today?", "How much snow is expected in Denver?", "When does the heatwave end?",
    "what's the UV index at noon", "is it going to be windy for sailing on sunday",
    "Who won the football match last night?", "When is the next Champions League final?", "How many goals has Messi scored?",
    "Who is the best tennis player of all time?", "what time does the Formula 1 race start", "Which team won the NBA title in 2016?",
    "How long is a marathon in miles?", "explain the offside rule in soccer", "Who holds the 100m world record?",
    "is the cricket test match on tv today", "How do I bake sourdough bread?", "Best pasta recipe with fresh tomatoes",
    "How long should I boil an egg for a runny yolk?", "what can I cook with chickpeas and spinach",
    "How many calories are in a banana?", "Can I freeze cooked rice?", "what temperature to roast a chicken",
    "How do I make a vegan chocolate cake?", "substitute for buttermilk in pancakes", "how to sharpen a kitchen knife",
    "What is the capital of Australia?", "Who painted the Mona Lisa?", "How far is the moon from the earth?",
    "recommend a good science fiction novel", "What's a good movie to watch tonight?", "how do I learn to play guitar",
    "Translate 'good morning' into Japanese", "what is the square root of 144", "Why is the sky blue?",
    "How do plants make oxygen?", "Tell me a joke about penguins", "Write a poem about autumn leaves",
    "What are the symptoms of the flu?", "how many hours of sleep does a teenager need", "Best exercises for lower back pain",
    "How do I get rid of aphids on my roses?", "when should I plant tomatoes outside", "How often should I water a cactus?",
    "what's the best time to visit Japan", "Do I need a visa to travel to Brazil?", "Cheapest way to get from Rome to Florence",
    "How do I change a flat bicycle tyre?", "what oil does a 2012 Honda Civic take", "How do I fix a leaking tap?",
    "Who was the first person on the moon?", "When did the Roman Empire fall?", "How many bones are in the human body?",
    "What is the speed of light?", "how do vaccines work", "Which planet has the most moons?",
]  # fmt: skip
HELD_OUT_INTENTS = {"newsletter_subscription", "recover_password", "review", "delivery_options", "complaint"}
BASELINE_OUT_OF_SCOPE_RATE = 0.02
START = datetime(2025, 3, 3, 8, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def calibrated_confidences(n: int, seed: int) -> list[float]:
    """Like a calibrated router's in distribution: mean about 0.99, a few below 0.95."""
    return list(np.clip(1 - np.random.default_rng(seed).exponential(0.01, n), 0.3, 1.0))


def collapsed_confidences(n: int, seed: int) -> list[float]:
    return list(np.random.default_rng(seed).uniform(0.35, 0.9, n))


def per_intent(rows, count: int, *, skip: int = 0, exclude=frozenset()) -> list:
    """``count`` rows of every intent (after its first ``skip``), intents interleaved as traffic would be."""
    by_intent: dict[str, list] = {}
    for row in rows:
        if row.intent not in exclude:
            by_intent.setdefault(row.intent, []).append(row)
    chosen = [group[skip : skip + count] for _, group in sorted(by_intent.items())]
    return [row for turn in zip(*chosen, strict=False) for row in turn]


def record_window(store, texts, *, confidences, out_of_scope_every: int = 50, start: datetime = START) -> None:
    """Route decisions as the router writes them, one a minute; every ``out_of_scope_every``-th one out of scope."""
    for i, (text, confidence) in enumerate(zip(texts, confidences, strict=True)):
        out_of_scope = out_of_scope_every and i % out_of_scope_every == out_of_scope_every - 1
        store.record(Decision(
            node="router", kind="route", input=text, confidence=float(confidence), strategy="classifier",
            output={"route": "escalate" if out_of_scope else "lookup", "intent": None if out_of_scope else "track_order"},
            escalated=bool(out_of_scope), outcome="out_of_scope" if out_of_scope else "routed",
            timestamp=start + timedelta(minutes=i),
        ))  # fmt: skip


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


@pytest.fixture(scope="module")
def reference(support_splits, encoder) -> DriftReference:
    """15 train requests per intent, 8 held-out ones per intent from the test split."""
    return build_reference(
        [r.text for r in per_intent(support_splits["train"], 15)], [r.text for r in per_intent(support_splits["test"], 8)],
        baseline_confidences=calibrated_confidences(400, seed=0), baseline_out_of_scope_rate=BASELINE_OUT_OF_SCOPE_RATE,
        encoder=encoder, heldout_split="test",
    )  # fmt: skip


def window_report(reference, encoder, texts, *, confidences=None, out_of_scope_every=50) -> DriftReport:
    store = SQLiteTraceStore(":memory:")
    record_window(store, texts, confidences=confidences or calibrated_confidences(len(texts), seed=len(texts)),
                  out_of_scope_every=out_of_scope_every)  # fmt: skip
    return monitor_drift(store, reference, encoder=encoder)


@pytest.mark.parametrize("skip", [8, 20])
def test_held_out_bitext_requests_raise_no_retrain_signal(reference, encoder, support_splits, skip):
    texts = [r.text for r in per_intent(support_splits["test"], 5, skip=skip)]  # 135 requests the reference never saw
    report = window_report(reference, encoder, texts)
    m = report.metrics
    assert report.window == 135 and report.enough_data
    assert report.crossed == [] and not report.retrain, m
    assert m.embedding_distance_ratio < 1.25 and m.novel_input_share < 0.1
    assert m.confidence_psi < 0.15 and abs(m.out_of_scope_rate - BASELINE_OUT_OF_SCOPE_RATE) < 0.02


def test_off_topic_requests_raise_a_retrain_signal_through_the_embeddings_alone(reference, encoder):
    # The router is fooled: confident, in scope. Only the inputs themselves show that the traffic changed.
    report = window_report(reference, encoder, OFF_TOPIC)
    assert report.retrain
    assert report.crossed == ["embedding_distance_ratio", "novel_input_share"]
    assert report.metrics.embedding_distance_ratio > 2 and report.metrics.novel_input_share > 0.9


def test_requests_of_intents_the_training_set_lacks_raise_a_retrain_signal(support_splits, encoder):
    reference = build_reference(
        [r.text for r in per_intent(support_splits["train"], 15, exclude=HELD_OUT_INTENTS)],
        [r.text for r in per_intent(support_splits["test"], 8, exclude=HELD_OUT_INTENTS)],
        baseline_confidences=calibrated_confidences(400, seed=0), baseline_out_of_scope_rate=BASELINE_OUT_OF_SCOPE_RATE,
        encoder=encoder,
    )  # fmt: skip
    known = [r.text for r in per_intent(support_splits["test"], 3, skip=8, exclude=HELD_OUT_INTENTS)]
    new = [r.text for r in support_splits["test"] if r.intent in HELD_OUT_INTENTS][:40]
    report = window_report(
        reference, encoder, [text for pair in zip(known, new, strict=False) for text in pair] + known[40:]
    )
    assert report.retrain and "novel_input_share" in report.crossed
    assert report.metrics.novel_input_share > 0.3  # 40 of 106 requests are of the new intents


def test_collapsed_confidences_raise_the_psi_above_its_threshold(reference, encoder, support_splits):
    texts = [r.text for r in per_intent(support_splits["test"], 4, skip=8)]
    report = window_report(reference, encoder, texts, confidences=collapsed_confidences(len(texts), seed=1))
    assert report.crossed == ["confidence_psi"] and report.retrain
    assert report.metrics.confidence_psi > 1.0 and report.metrics.confidence_mean < 0.7


def test_more_out_of_scope_requests_than_the_baseline_raise_a_retrain_signal(reference, encoder, support_splits):
    texts = [r.text for r in per_intent(support_splits["test"], 4, skip=8)]
    report = window_report(reference, encoder, texts, out_of_scope_every=4)
    assert report.crossed == ["out_of_scope_rate_increase"] and report.metrics.out_of_scope_rate == 0.25


def test_the_check_is_logged_as_a_drift_decision_with_a_warning_on_retrain(reference, encoder, support_splits, caplog):
    store = SQLiteTraceStore(":memory:")
    texts = [r.text for r in per_intent(support_splits["test"], 3, skip=8)]
    record_window(store, texts, confidences=calibrated_confidences(len(texts), seed=3))
    ok = monitor_drift(store, reference, encoder=encoder, window=60)
    record_window(store, OFF_TOPIC, confidences=calibrated_confidences(60, seed=4), start=START + timedelta(hours=3))
    with caplog.at_level(logging.WARNING, logger="agentgraph.distill.drift"):
        retrain = monitor_drift(store, reference, encoder=encoder, window=60)

    assert not ok.retrain and retrain.retrain
    first, second = store.decisions(kind="drift")
    assert (first.node, first.kind, first.outcome, second.outcome) == ("router", "drift", "ok", "retrain")
    assert second.input == {"window": 60, "since": retrain.since.isoformat(), "until": retrain.until.isoformat()}
    assert retrain.since == START + timedelta(hours=3) and retrain.until == START + timedelta(hours=3, minutes=59)
    assert DriftReport.model_validate(second.output) == retrain
    assert "retrain signal for router: embedding_distance_ratio, novel_input_share" in caplog.text


def test_a_window_smaller_than_the_minimum_is_reported_but_signals_nothing(reference, encoder):
    report = window_report(reference, encoder, OFF_TOPIC[:10])
    assert report.crossed and not report.enough_data and not report.retrain


def test_the_window_is_the_last_n_route_decisions_of_the_node_in_the_time_range():
    store = SQLiteTraceStore(":memory:")
    record_window(store, [f"request {i}" for i in range(10)], confidences=[0.99] * 10)
    store.record(Decision(node="router", kind="route", input=None, outcome="rejected", timestamp=START))
    store.record(Decision(node="other", kind="route", input="x", outcome="routed", timestamp=START))
    assert [d.input for d in route_window(store, last=3)] == ["request 7", "request 8", "request 9"]
    since, until = START + timedelta(minutes=2), START + timedelta(minutes=5)
    assert [d.input for d in route_window(store, since=since, until=until)] == ["request 2", "request 3", "request 4"]


def test_a_reference_saves_and_loads_without_pickles(reference, tmp_path):
    loaded = DriftReference.load(reference.save(tmp_path / "reference"))
    assert loaded.info == reference.info
    np.testing.assert_array_equal(loaded.train_embeddings, reference.train_embeddings)
    np.testing.assert_array_equal(loaded.heldout_scores, reference.heldout_scores)
    np.testing.assert_array_equal(loaded.baseline_confidences, reference.baseline_confidences)


def test_drift_errors_say_what_to_give(reference, encoder):
    with pytest.raises(DriftError, match="either a router"):
        build_reference(["a"] * 10, ["b"], baseline_confidences=[0.9], encoder=encoder)
    with pytest.raises(DriftError, match="route some requests first"):
        check_drift(reference, [], encoder=encoder)
    with pytest.raises(DriftError, match="no drift reference"):
        DriftReference.load("/nonexistent")


@pytest.fixture(scope="module")
def route_dataset(tmp_path_factory, support_splits) -> Path:
    """A curated route dataset of 12 Bitext requests per intent, built by `agentgraph distill dataset`."""
    folder = tmp_path_factory.mktemp("drift-dataset")
    rows = per_intent(support_splits["train"], 12)
    labelled = folder / "requests.jsonl"
    labelled.write_text("".join(json.dumps({"text": r.text, "label": r.intent}) + "\n" for r in rows), encoding="utf-8")
    assert (
        main(["distill", "dataset", "--role", "route", "--import", str(labelled), "--out", str(folder / "data")]) == 0
    )
    return folder / "data"


def test_the_drift_command_exits_3_on_a_retrain_signal_and_0_otherwise(route_dataset, support_splits, encoder, tmp_path,
                                                                        monkeypatch, capsys):  # fmt: skip
    # A cache of its own for the reference, sharing the exported encoder (exporting it again takes a while).
    encoders = tmp_path / "cache" / "artifacts" / "encoders"
    encoders.parent.mkdir(parents=True)
    encoders.symlink_to(encoder_onnx_folder().parent)
    monkeypatch.setenv("AGENTGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    # The baseline given, so that the command finds the reference in the cache and routes nothing itself.
    build_dataset_reference(load_route_dataset(route_dataset), baseline_confidences=calibrated_confidences(400, seed=0),
                            baseline_out_of_scope_rate=BASELINE_OUT_OF_SCOPE_RATE, encoder=encoder)  # fmt: skip
    capsys.readouterr()
    in_domain, off_topic = SQLiteTraceStore(tmp_path / "in.db"), SQLiteTraceStore(tmp_path / "off.db")
    texts = [r.text for r in per_intent(support_splits["test"], 3)]
    record_window(in_domain, texts, confidences=calibrated_confidences(len(texts), seed=5))
    record_window(off_topic, OFF_TOPIC, confidences=calibrated_confidences(60, seed=6))

    assert main(["distill", "drift", "--traces", str(tmp_path / "in.db"), "--data", str(route_dataset)]) == 0
    out = capsys.readouterr().out
    assert "ok          no threshold crossed" in out and "RETRAIN" not in out
    assert main(["distill", "drift", "--traces", str(tmp_path / "off.db"), "--data", str(route_dataset), "--json"]) == 3
    report = DriftReport.model_validate_json(capsys.readouterr().out)
    assert report.retrain and report.window == 60
    assert main(["distill", "drift", "--traces", str(tmp_path / "off.db"), "--data", str(route_dataset)]) == 3
    assert "\nRETRAIN     embedding_distance_ratio, novel_input_share crossed" in capsys.readouterr().out
    assert [d.outcome for d in off_topic.decisions(kind="drift")] == ["retrain", "retrain"]


def days_of_traffic(path: Path) -> dict[str, dict]:
    """Three days of routing, LLM calls, shadow comparisons and drift checks; returns what each day should count.

    Requests come two to a thread. Each day the LLM routes the first request (teacher mode: its call comes
    before the decision), the teacher fails on the fourth (a call too), the second is shadowed (a call that
    answers nothing) and, on days whose escalations go to the LLM, each escalated request is answered by it.
    """
    plan = {  # day: routes in order, escalations answered by the LLM, shadow (agree, disagree, teacher failed), retrain
        "2025-03-03": (["lookup"] * 5 + ["action"] * 3 + ["escalate"] * 2, True, (4, 1, 1), False),
        "2025-03-04": (["lookup"] * 2 + ["knowledge"] * 4, False, (0, 0, 0), None),
        "2025-03-06": (["action"] * 6 + ["escalate"] * 6, True, (1, 3, 0), True),
    }
    store, expected = SQLiteTraceStore(path), {}
    for day, (routes, answered, (agree, disagree, failed), retrain) in plan.items():
        start = datetime.fromisoformat(day).replace(hour=9, tzinfo=UTC)
        for i, route in enumerate(routes):
            at, thread = start + timedelta(minutes=10 * i), f"{day}-{i // 2}"
            if i in (0, 3):
                store.record_call(LLMCall(node="router", messages=[], thread_id=thread, timestamp=at,
                                          error="timeout" if i == 3 else None))  # fmt: skip
            store.record(Decision(node="router", kind="route", input=f"request {i}", output={"route": route},
                                  strategy="llm" if i == 0 else "classifier", thread_id=thread,
                                  timestamp=at + timedelta(seconds=1)))  # fmt: skip
            if route == "escalate" and answered:
                store.record_call(
                    LLMCall(node="escalate", messages=[], thread_id=thread, timestamp=at + timedelta(seconds=2))
                )
            if i == 1:
                store.record_call(LLMCall(node="router", messages=[], thread_id=thread, metadata={"agentgraph_shadow": True},
                                          timestamp=at + timedelta(seconds=3)))  # fmt: skip
        for outcome, count in (("agree", agree), ("disagree", disagree), ("teacher_failed", failed)):
            verdict = {"agree": True, "disagree": False}.get(outcome)
            for _ in range(count):
                store.record(Decision(node="router", kind="shadow", input="x", output={"agree": verdict}, outcome=outcome,
                                      timestamp=start + timedelta(hours=2)))  # fmt: skip
        if retrain is not None:
            metrics = DriftMetrics(
                out_of_scope_rate=0.01, baseline_out_of_scope_rate=0.02, confidence_psi=0.9 if retrain else 0.05,
                confidence_mean=0.9, baseline_confidence_mean=0.99, embedding_distance=0.17, baseline_embedding_distance=0.17,
                embedding_distance_ratio=1.0, novel_input_share=0.04,
            )  # fmt: skip
            report = DriftReport(node="router", dataset_sha256=None, window=200, since=start, until=start + timedelta(hours=3),
                                 metrics=metrics, thresholds=DriftThresholds(), crossed=["confidence_psi"] if retrain else [],
                                 enough_data=True, retrain=retrain)  # fmt: skip
            store.record(drift_decision(report).model_copy(update={"timestamp": start + timedelta(hours=4)}))
        escalations = routes.count("escalate") if answered else 0
        expected[day] = {
            "requests": len(routes), "routes": {route: routes.count(route) for route in set(routes)},
            "llm_calls": 3 + escalations, "llm_share": (2 + escalations) / len(routes),
            "agreement": agree / (agree + disagree) if agree + disagree else None, "shadow_comparisons": agree + disagree,
            "retrain": retrain,
        }  # fmt: skip
    store.close()
    return expected


def test_llm_calls_are_attributed_to_requests_through_their_thread():
    requests = [
        Decision(node="router", kind="route", input=f"request {i}", thread_id="t", timestamp=START + timedelta(minutes=i))
        for i in range(3)
    ]  # fmt: skip
    calls = [
        LLMCall(
            node="router", messages=[], thread_id="t", timestamp=START + timedelta(minutes=1, seconds=-1)
        ),  # routing
        LLMCall(node="escalate", messages=[], thread_id="t", timestamp=START + timedelta(seconds=30)),  # an answer
        LLMCall(node="escalate", messages=[], thread_id="other", timestamp=START),
        LLMCall(
            node="router",
            messages=[],
            thread_id="t",
            metadata={"agentgraph_shadow": True},
            timestamp=START + timedelta(minutes=2, seconds=5),
        ),
    ]
    assert requests_using_llm(requests, calls) == {requests[0].id, requests[1].id}


def test_the_report_counts_what_the_store_holds_and_draws_it(tmp_path, capsys):
    expected = days_of_traffic(tmp_path / "decisions.db")
    png = tmp_path / "out" / "report.png"
    assert main(["report", "--traces", str(tmp_path / "decisions.db"), "--out", str(png)]) == 0
    table = capsys.readouterr().out.splitlines()
    header, rows = table[0].split(), [line.split() for line in table[1:4]]
    routes = header[2:6]
    assert header[:2] == ["bucket", "requests"] and routes == ["action", "escalate", "knowledge", "lookup"]
    for row in rows:
        want = expected[row[0]]
        assert int(row[1]) == want["requests"]
        assert {route: int(count) for route, count in zip(routes, row[2:6], strict=False) if int(count)} == want[
            "routes"
        ]
    assert table[4] == f"wrote       {png}"
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000

    assert main(["report", "--traces", str(tmp_path / "decisions.db"), "--out", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for bucket in report["buckets"]:
        want = expected[bucket["start"][:10]]
        assert bucket["llm_calls"] == want["llm_calls"]
        assert bucket["llm_share"] == pytest.approx(want["llm_share"])
        assert (bucket["agreement"], bucket["shadow_comparisons"]) == (want["agreement"], want["shadow_comparisons"])
        assert (bucket["drift"] and bucket["drift"]["retrain"]) == want["retrain"]


def test_an_hourly_report_splits_the_days(tmp_path):
    days_of_traffic(tmp_path / "decisions.db")
    store = SQLiteTraceStore(tmp_path / "decisions.db")
    report = build_report(store, bucket="hour")
    store.close()
    assert sum(row.requests for row in report.buckets) == 28
    assert [row.start.hour for row in report.buckets if row.start.day == 3] == [
        9,
        10,
        11,
        13,
    ]  # routing, shadows, drift


def test_an_empty_store_is_reported_as_such_and_writes_no_png(tmp_path, capsys):
    SQLiteTraceStore(tmp_path / "empty.db").close()
    png = tmp_path / "report.png"
    assert main(["report", "--traces", str(tmp_path / "empty.db"), "--out", str(png)]) == 2
    assert "nothing to report" in capsys.readouterr().err and not png.exists()
    assert main(["report", "--traces", str(tmp_path / "missing.db"), "--out", str(png)]) == 2
    assert "no trace store" in capsys.readouterr().err and not (tmp_path / "missing.db").exists()
