"""Curating a training set: traces and labelled files in, scrubbed, de-duplicated, clustered, split and balanced out.

Everything runs for real: SQLite trace stores, the int8 MiniLM encoder (a few
hundred texts per test), k-means, files on disk and the CLI.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from agentgraph.classifier import SentenceEncoder
from agentgraph.cli import main
from agentgraph.distill.dataset import (
    DatasetConfig,
    build_dataset,
    file_examples,
    normalised_text,
    trace_examples,
    write_dataset,
)
from agentgraph.graphs.customer_support.bitext import (
    customer_support_csv,
    load_customer_support,
    split_customer_support,
)
from agentgraph.graphs.customer_support.distillation import (
    SupportExtraction,
    customer_support_examples,
    support_ticket_examples,
    ticket_target,
)
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.idempotency import canonical_json
from agentgraph.records.traces import LLMCall, SQLiteTraceStore

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


@pytest.fixture(scope="module")
def bitext_rows() -> list[dict[str, str]]:
    with customer_support_csv().open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _bitext_subset(rows: list[dict[str, str]], path: Path, *, per_intent: int) -> Path:
    """The first ``per_intent`` rows of every intent, in the Bitext file's own format."""
    taken: Counter = Counter()
    chosen = []
    for row in rows:
        if taken[row["intent"]] < per_intent:
            taken[row["intent"]] += 1
            chosen.append(row)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return path


def _labelled_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _intent_rows(bitext: list[dict[str, str]], counts: dict[str, int]) -> list[tuple[str, str]]:
    """``(text, intent)`` for the first ``counts[intent]`` Bitext requests of each intent."""
    taken: Counter = Counter()
    rows = []
    for row in bitext:
        if taken[row["intent"]] < counts.get(row["intent"], 0):
            taken[row["intent"]] += 1
            rows.append((row["instruction"], row["intent"]))
    return rows


def _call(text: str, answer: str, *, accepted: bool | None, step_type: str | None = "route", **fields) -> LLMCall:
    return LLMCall(
        node="router", step_type=step_type, output=answer, accepted=accepted, thread_id="t1",
        messages=[{"role": "system", "content": "Answer with one intent."}, {"role": "user", "content": text}], **fields,
    )  # fmt: skip


def _read_split(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_only_accepted_calls_become_examples_and_the_rest_are_counted(tmp_path):
    store = SQLiteTraceStore(tmp_path / "traces.sqlite")
    for call in [
        _call("where is my order?", "track_order", accepted=True),
        _call("cancel order 12", "cancel_order", accepted=True),
        _call("I was charged twice", '{"intent": "payment_issue"}', accepted=True),  # a JSON answer: its intent
        _call("refund please", "get_refund", accepted=False),
        _call("open an account", "create_account", accepted=None),
        _call("delete my account", "delete_account", accepted=None),
        _call("hello", "", accepted=True),  # accepted, but nothing to learn
        _call("plan the refund", "1. check the order", accepted=True, step_type="plan"),
        _call("track it", None, accepted=False, error="TimeoutError: no answer"),
    ]:
        store.record_call(call)

    source = trace_examples(store, role="route")
    assert [(e.input, e.target) for e in source.examples] == [
        ("where is my order?", "track_order"), ("cancel order 12", "cancel_order"), ("I was charged twice", "payment_issue"),
    ]  # fmt: skip
    assert source.examples[0].messages[0] == {"role": "system", "content": "Answer with one intent."}
    counts = {key: value for key, value in source.counts.items() if key != "path"}
    assert counts == {
        "calls": 9, "accepted": 3, "rejected": 1, "no_outcome": 2, "unusable": 1, "other_step_types": 1, "failed": 1,
    }  # fmt: skip
    # Another step type is another role's data: the plan call is there when asked for.
    assert [e.target for e in trace_examples(store, role="route", step_types=["plan"]).examples] == [
        "1. check the order"
    ]


def test_pii_is_scrubbed_from_inputs_targets_and_prompts(tmp_path, encoder):
    store = SQLiteTraceStore(tmp_path / "traces.sqlite")
    secret_mail, secret_card = "jo.smith@example.com", "4111 1111 1111 1111"
    text = f"my email is {secret_mail} and card {secret_card} was charged twice"
    store.record_call(
        LLMCall(
            step_type="extract", accepted=True,
            messages=[{"role": "system", "content": f"Customer {secret_mail}."}, {"role": "user", "content": text}],
            tool_calls=[{"name": "Ticket", "args": {"intent": "payment_issue", "email": secret_mail}}],
        )
    )  # fmt: skip
    store.record_call(
        LLMCall(step_type="extract", accepted=True, messages=[{"role": "user", "content": "cancel order 4471"}],
                output='{"intent": "cancel_order", "email": null}')
    )  # fmt: skip
    dataset = build_dataset([trace_examples(store, role="extract")], DatasetConfig(role="extract"), encoder=encoder)
    write_dataset(dataset, tmp_path / "out")

    written = "".join((tmp_path / "out" / name).read_text() for name in ("train.jsonl", "dev.jsonl", "test.jsonl"))
    assert secret_mail not in written and secret_card not in written and "4111" not in written
    (scrubbed,) = [e for e in dataset.splits["train"] if e.label == "payment_issue"]
    assert scrubbed.input == "my email is [EMAIL] and card [CARD_NUMBER] was charged twice"
    assert scrubbed.target == {"intent": "payment_issue", "email": "[EMAIL]"}
    assert scrubbed.messages[0]["content"] == "Customer [EMAIL]."
    assert dataset.manifest["steps"]["pii"] == {"examples": 0, "matches": {}}


def test_near_identical_inputs_are_deduplicated(tmp_path, encoder):
    data = _labelled_csv(
        tmp_path / "requests.csv",
        [
            ("How do I reset my password", "recover_password"),
            ("how do i reset my password?!", "recover_password"),  # the same once case and punctuation go
            ("how can i reset my password", "recover_password"),  # cosine 0.98 to the first
            ("how can i reset my password", "contact_human_agent"),  # the same words, another target: kept
            ("Where is my order 12345?", "track_order"),
            ("where is my order 98765 ?!", "track_order"),  # only the order number differs
            ("where is my parcel?", "track_order"),
            ("I want to cancel my subscription", "newsletter_subscription"),
        ],
    )
    config = DatasetConfig(role="route", dedup_threshold=0.97, class_floor=0)
    dataset = build_dataset([file_examples(data, role="route")], config, encoder=encoder)

    kept = sorted(e.input for split in SPLITS for e in dataset.splits[split])
    assert kept == sorted([
        "How do I reset my password", "how can i reset my password", "Where is my order 12345?",
        "where is my parcel?", "I want to cancel my subscription",
    ])  # fmt: skip
    kept_conflict = [e for split in SPLITS for e in dataset.splits[split] if e.input == "how can i reset my password"]
    assert [e.target for e in kept_conflict] == ["contact_human_agent"]
    assert dataset.manifest["steps"]["deduplication"] == {
        "exact_duplicates": 2, "near_duplicates": 1, "near_identical_other_target": 1, "kept": 5,
    }  # fmt: skip


def test_splits_are_stratified_and_deterministic(tmp_path, encoder, bitext_rows):
    counts = {"track_order": 60, "get_refund": 60, "create_account": 40}
    data = _labelled_csv(tmp_path / "requests.csv", _intent_rows(bitext_rows, counts))
    config = DatasetConfig(role="route", fractions={"train": 0.6, "dev": 0.2, "test": 0.2}, class_floor=0)

    first = build_dataset([file_examples(data, role="route")], config, encoder=encoder)
    manifest_path = write_dataset(first, tmp_path / "first")
    kept = Counter(e.label for split in SPLITS for e in first.splits[split])
    for split, share in config.fractions.items():
        per_class = Counter(e.label for e in first.splits[split])
        assert set(per_class) == set(counts), split
        if split != "train":  # dev and test take their rounded share of each class; train the rest
            assert per_class == {label: round(share * n) for label, n in kept.items()}, split

    # The manifest's hashes are those of the files' contents, and a second run writes the same bytes.
    manifest = json.loads(manifest_path.read_text())
    for split in SPLITS:
        rows = _read_split(tmp_path / "first", split)
        assert manifest["splits"][split]["sha256"] == hashlib.sha256(canonical_json(rows).encode()).hexdigest()
        assert manifest["splits"][split]["classes"]["route"] == dict(sorted(Counter(r["label"] for r in rows).items()))
    second = build_dataset([file_examples(data, role="route")], config, encoder=encoder)
    write_dataset(second, tmp_path / "second")
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name

    reseeded = build_dataset(
        [file_examples(data, role="route")], config.model_copy(update={"seed": 7}), encoder=encoder
    )
    assert reseeded.manifest["splits"]["test"]["sha256"] != manifest["splits"]["test"]["sha256"]
    assert reseeded.manifest["steps"]["deduplication"] == manifest["steps"]["deduplication"]


def test_rare_classes_are_oversampled_in_train_only(tmp_path, encoder, bitext_rows):
    counts = {"track_order": 40, "get_refund": 40, "check_invoice": 40, "review": 5}
    data = _labelled_csv(tmp_path / "requests.csv", _intent_rows(bitext_rows, counts))
    dataset = build_dataset([file_examples(data, role="route")], DatasetConfig(role="route"), encoder=encoder)

    balance = dataset.manifest["steps"]["balance"]
    floor = balance["floor"]["route"]
    train = Counter(e.label for e in dataset.splits["train"])
    originals = Counter(e.label for e in dataset.splits["train"] if not e.oversampled)
    assert (
        originals["review"] < floor <= min(originals[label] for label in ("track_order", "get_refund", "check_invoice"))
    )
    assert train["review"] == floor and balance["oversampled"] == {"route": {"review": floor - originals["review"]}}
    copies = [e for e in dataset.splits["train"] if e.oversampled]
    assert {e.label for e in copies} == {"review"} and len(copies) == balance["added"]
    assert {e.id for e in copies} <= {e.id for e in dataset.splits["train"] if not e.oversampled}
    assert not any(e.oversampled for split in ("dev", "test") for e in dataset.splits[split])
    assert all(e.cluster is not None for split in SPLITS for e in dataset.splits[split])


@pytest.mark.parametrize("role", ["route", "extract"])
def test_customer_support_import_keeps_the_benchmark_test_split(tmp_path, encoder, bitext_rows, role):
    subset = _bitext_subset(bitext_rows, tmp_path / "bitext.csv", per_intent=10)
    benchmark = split_customer_support(load_customer_support(subset))
    dataset = build_dataset([customer_support_examples(subset, role=role)], DatasetConfig(role=role), encoder=encoder)

    test = dataset.splits["test"]
    assert [e.input for e in test] == [r.text for r in benchmark["test"]]
    if role == "route":
        assert [e.target for e in test] == [r.intent for r in benchmark["test"]]
    else:
        targets = [SupportExtraction.model_validate(e.target) for e in test]
        assert [t.intent for t in targets] == [r.intent for r in benchmark["test"]]
        assert [
            getattr(t, r.entity_type) for t, r in zip(targets, benchmark["test"], strict=True) if r.entity_type
        ] == [r.entity_value for r in benchmark["test"] if r.entity_type]
    # Train and dev hold only their benchmark split's requests, none repeating a test request.
    for split in ("train", "dev"):
        assert {e.input for e in dataset.splits[split] if not e.oversampled} <= {r.text for r in benchmark[split]}
    test_keys = {(normalised_text(e.input), canonical_json(e.target)) for e in test}
    assert not any(
        (normalised_text(e.input), canonical_json(e.target)) in test_keys
        for split in ("train", "dev")
        for e in dataset.splits[split]
    )
    assert dataset.manifest["sources"]["customer-support"]["pinned_test"] == len(benchmark["test"])


def test_ticket_targets_complete_a_cut_span_and_leave_out_what_the_message_does_not_hold():
    # Bitext spans cut short, as the data has them: the target is the number the message writes.
    cut = {"intent": "cancel_order", "order_id": "3707955617"}
    assert ticket_target("cancel purchase 370795561790?", cut) == {"intent": "cancel_order", "order_id": "370795561790"}
    assert ticket_target("refunding 350 dollars", {"intent": "get_refund", "refund_amount": "3"}) == {
        "intent": "get_refund",
        "refund_amount": 350.0,
    }
    # Fields the ticket does not have are left out; an id glued to a word is not one the ticket reads.
    named = {"intent": "check_invoice", "invoice_id": "#12588", "person_name": "Ann Lee"}
    assert ticket_target("Ann Lee here, invoice #12588", named) == {"intent": "check_invoice", "invoice_id": "#12588"}
    assert ticket_target("cancelling order732201349959", {"intent": "cancel_order", "order_id": "732201349959"}) is None

    source = support_ticket_examples()
    dropped = source.counts["dropped_entity_not_in_message"]
    assert 0 < dropped < 10 and len(source.examples) + dropped == source.counts["rows"]
    for example in source.examples:  # every target is what the graph's node would accept for its message
        SupportTicket.model_validate(example.target, context={"source_text": example.input})


def test_requests_repeating_a_benchmark_test_request_are_dropped_not_the_test_request(tmp_path, encoder, bitext_rows):
    subset = _bitext_subset(bitext_rows, tmp_path / "bitext.csv", per_intent=6)
    benchmark = split_customer_support(load_customer_support(subset))
    # The same requests again, shouted, from another source: they would leak the test split into train.
    repeats = [(r.text.upper() + "!", r.intent) for r in benchmark["test"][:5]]
    # Given first, so they would be kept first if test requests did not come first.
    sources = [
        file_examples(_labelled_csv(tmp_path / "repeats.csv", repeats), role="route"),
        customer_support_examples(subset, role="route"),
    ]
    dataset = build_dataset(sources, DatasetConfig(role="route"), encoder=encoder)

    assert [e.input for e in dataset.splits["test"]] == [r.text for r in benchmark["test"]]
    assert not any(e.source == "repeats.csv" for split in SPLITS for e in dataset.splits[split])
    assert dataset.manifest["steps"]["deduplication"]["exact_duplicates"] >= len(repeats)


def test_the_cli_curates_traces_and_files_end_to_end(tmp_path, capsys, bitext_rows):
    store = SQLiteTraceStore(tmp_path / "traces.sqlite")
    for text, intent in _intent_rows(bitext_rows, {"track_order": 8, "cancel_order": 8}):
        store.record_call(_call(text, intent, accepted=True))
    store.record_call(_call("please call me back at jo@example.com", "contact_human_agent", accepted=True))
    store.record_call(_call("where is my money", "track_refund", accepted=None))
    store.close()
    data = _labelled_csv(tmp_path / "requests.csv", _intent_rows(bitext_rows, {"get_refund": 20, "review": 20}))
    out = tmp_path / "dataset"

    argv = ["distill", "dataset", "--role", "route", "--traces", str(tmp_path / "traces.sqlite"),
            "--import", str(data), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "source      traces: calls 18," in printed and "no outcome 1" in printed and "accepted 17" in printed
    assert "source      requests.csv: rows 40" in printed
    assert "pii         0 examples scrubbed" in printed
    for line in (
        "dedup       57 -> ",
        "clusters    route: ",
        "balance     floor route ",
        "train       ",
        "test        ",
    ):
        assert line in printed, line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["traces"]["no_outcome"] == 1
    assert f"sha256      {manifest['sha256']}" in printed
    assert sum(manifest["splits"][split]["examples"] for split in SPLITS) == sum(
        len(_read_split(out, s)) for s in SPLITS
    )

    assert main([*argv[:-1], str(tmp_path / "again"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == manifest
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_the_cli_says_what_is_missing(tmp_path, capsys):
    assert main(["distill", "dataset", "--role", "route", "--out", str(tmp_path / "out")]) == 2
    assert "give --traces STORE, --import FILE or --customer-support" in capsys.readouterr().err
    assert (
        main(
            ["distill", "dataset", "--role", "route", "--traces", str(tmp_path / "none.sqlite"), "--out", str(tmp_path)]
        )
        == 2
    )
    assert "no trace store at" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()
    store = SQLiteTraceStore(tmp_path / "pending.sqlite")
    store.record_call(_call("where is my order?", "track_order", accepted=None))
    store.close()
    assert (
        main(
            [
                "distill",
                "dataset",
                "--role",
                "route",
                "--traces",
                str(tmp_path / "pending.sqlite"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no examples" in capsys.readouterr().err
