"""Outcome rules label the LLM's traced calls from what came of their turn; a person reviews the rest."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from scripted_llm import scripted_llm
from test_modes import intent_call

from agentgraph.cli import main
from agentgraph.modes import NodeModes
from agentgraph.records.decisions import Decision
from agentgraph.records.outcomes import OutcomeRules, accepted_turns, label_outcomes
from agentgraph.records.traces import LLMCall, SQLiteTraceStore

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Thread:
    """Records of one thread written in time order, a second apart, as a graph's nodes write them."""

    def __init__(self, store: SQLiteTraceStore, thread_id: str) -> None:
        self.store, self.thread_id, self.at = store, thread_id, START

    def _tick(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at

    def decision(self, kind: str, text: object = "...", **fields: object) -> None:
        self.store.record(Decision(node=kind, kind=kind, input=text, thread_id=self.thread_id, timestamp=self._tick(),
                                   **fields))  # fmt: skip

    def call(self, step_type: str = "extract") -> str:
        call = LLMCall(node=step_type, step_type=step_type, messages=[{"role": "user", "content": "where is 10001?"}],
                       output="{}", thread_id=self.thread_id, timestamp=self._tick())  # fmt: skip
        return self.store.record_call(call).id


@pytest.fixture
def store(tmp_path):
    store = SQLiteTraceStore(tmp_path / "decisions.db")
    yield store
    store.close()


def outcomes(store: SQLiteTraceStore) -> dict[str, bool | None]:
    return {call.id: call.accepted for call in store.calls()}


@pytest.mark.parametrize(("answer", "accepted"), [("approve", True), ("edit", False), ("reject", False)])
def test_an_approval_labels_the_turn_that_asked_for_the_write(store, answer, accepted):
    thread = Thread(store, "t")
    thread.decision("route", "refund 30 dollars on order 10001")
    call = thread.call()
    thread.decision("classify_tool", metadata={"approval": answer, "reviewer": "ana"})
    report = label_outcomes(store)
    assert outcomes(store) == {call: accepted} and report.by_rule == {"approval": 1}


def test_an_answered_clarifying_question_accepts_the_turn_that_asked_it(store):
    thread = Thread(store, "t")
    thread.decision("route", "order 10001")
    call = thread.call("route")
    thread.decision("route", "track it please", metadata={"answers": "What would you like to do with order 10001?"})
    label_outcomes(store)
    assert outcomes(store) == {call: True}


def test_a_flagged_or_handed_off_turn_stays_pending_and_a_rule_can_be_switched_off(store):
    thread = Thread(store, "t")
    thread.decision("route", "where is 10001?")
    flagged = thread.call()
    thread.decision("validate", outcome="flagged")
    thread.decision("route", "and 10002?")
    handed_off = thread.call()
    thread.decision("extract", outcome="handoff")
    thread.decision("validate", outcome="ok")
    thread.decision("route", "and 10003?")
    validated = thread.call()
    thread.decision("validate", outcome="ok")
    report = label_outcomes(store, OutcomeRules(validated=False))
    assert outcomes(store) == {flagged: None, handed_off: None, validated: None} and report.pending == 3
    report = label_outcomes(store)
    assert outcomes(store) == {flagged: None, handed_off: None, validated: True} and report.pending == 2


def test_accepted_turns_are_the_small_models_turns_too_and_never_a_complained_of_or_flagged_one(store):
    thread = Thread(store, "t")
    thread.decision("route", "where is 10001?", strategy="classifier")  # no LLM call: the small models alone
    thread.decision("validate", outcome="ok")
    thread.decision("route", "and 10002?", strategy="llm")
    thread.call("route")
    thread.decision("validate", outcome="ok")
    thread.decision("route", "wrong, I said 10003", strategy="classifier")  # complains of the turn before
    thread.decision("validate", outcome="flagged")
    other = Thread(store, "u")
    other.decision("route", "order 48213", strategy="classifier")
    other.decision("route", "cancel it", strategy="classifier", metadata={"answers": "What about order 48213?"})
    accepted = [(turn.start.input, turn.start.strategy, rule) for turn, rule in accepted_turns(store)]
    assert accepted == [
        ("where is 10001?", "classifier", "validated"),
        ("order 48213", "classifier", "answered_clarification"),
    ]
    assert [call.accepted for call in store.calls()] == [None], "accepted_turns labels nothing"


def test_a_later_complaint_overturns_a_rule_but_never_a_person(store, capsys):
    ruled_thread, reviewed_thread = Thread(store, "ruled"), Thread(store, "reviewed")
    calls = []
    for thread in (ruled_thread, reviewed_thread):
        thread.decision("route", "where is 10001?")
        calls.append(thread.call())
        thread.decision("validate", outcome="ok")
    ruled, reviewed = calls
    assert label_outcomes(store).accepted == 2

    verdicts = io.StringIO(json.dumps([{"id": reviewed, "accepted": True}]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", verdicts)
        assert main(["traces", "review", "--traces", str(store.path), "--apply", "-", "--reviewer", "ana"]) == 0
    assert json.loads(capsys.readouterr().out) == {"marked": 1, "accepted": 1, "rejected": 0}

    for thread in (ruled_thread, reviewed_thread):
        thread.decision("route", "That's not what I asked, I said order 10002")
    report = label_outcomes(store)
    assert outcomes(store) == {ruled: False, reviewed: True}
    assert report.by_rule == {"complaint": 1}
    [review] = store.decisions(node="trace_review")
    assert (review.input["call_id"], review.output, review.metadata["reviewer"]) == (reviewed, True, "ana")
    assert [d.strategy for d in store.decisions(node="outcome_rules") if d.input["call_id"] == ruled] == [
        "validated", "complaint"
    ]  # fmt: skip


def test_the_review_screen_gets_pending_calls_as_json_and_bad_verdicts_are_refused(store, capsys, tmp_path):
    thread = Thread(store, "t")
    thread.decision("route", "where is 10001?")
    call = thread.call()
    assert main(["traces", "review", "--traces", str(store.path), "--json"]) == 0
    [pending] = json.loads(capsys.readouterr().out)
    assert (pending["id"], pending["request"], pending["step_type"]) == (call, "where is 10001?", "extract")
    bad = tmp_path / "verdicts.json"
    bad.write_text(json.dumps([{"id": call, "accepted": "yes"}]))
    assert main(["traces", "review", "--traces", str(store.path), "--apply", str(bad)]) == 2
    assert "give a JSON list" in capsys.readouterr().err and outcomes(store) == {call: None}


def test_the_example_graph_s_teacher_answer_is_accepted_when_validated_and_rejected_after_a_complaint(
    embedded_slm, tmp_path, capsys
):
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.running import run_turn

    llm = scripted_llm(intent_call("check_refund_policy"), intent_call("track_order"))
    parts = CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm, llm=llm, modes=NodeModes.parse("router=teacher"))
    graph = compose(parts)

    def turn(message: str):
        return run_turn(graph, message, thread_id="outcomes", callbacks=[parts.llm_call_recorder])

    first = turn("How long do I have to send something back?")
    assert (first.route, first.llm_calls) == ("knowledge", 1)
    assert main(["traces", "label", "--traces", str(tmp_path / "decisions.db")]) == 0
    assert "1 accepted, 0 rejected (validated 1)" in capsys.readouterr().out
    [taught] = parts.trace_store.calls(thread_id="outcomes")
    assert taught.accepted is True

    turn("that's not what I asked, where is my order 10001?")
    report = label_outcomes(parts.trace_store)
    assert parts.trace_store.get(taught.id).accepted is False and report.by_rule.get("complaint") == 1
    rules = [(d.strategy, d.outcome) for d in parts.trace_store.decisions(node="outcome_rules")
             if d.input["call_id"] == taught.id]  # fmt: skip
    assert rules == [("validated", "accepted"), ("complaint", "rejected")]
