"""The output validator: each check, each action (redact, regenerate, flag), its decisions, and a real graph."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel, Field

from agentgraph.errors import EmptyInputError
from agentgraph.graphs.customer_support import SupportTicket
from agentgraph.nodes.output_validator import (
    ValidationReport,
    Violation,
    create_output_validator,
    length_check,
    pattern_check,
    pii_check,
    schema_check,
)
from agentgraph.records.decisions import DecisionState, SQLiteDecisionLog


class Reply(BaseModel):
    order_id: str = Field(pattern=r"^\d+$")
    message: str


def run(validator, draft: Any) -> dict[str, Any]:
    return validator({"draft": draft}, {})


def test_a_clean_output_passes_unchanged():
    update = run(
        create_output_validator([pii_check(), length_check(min_chars=5, max_chars=100)]), "Your order ships today."
    )
    report: ValidationReport = update["validation"]
    assert update["output"] == "Your order ships today."
    assert (report.passed, report.flagged, report.outcome, report.violations) == (True, False, "ok", [])
    [decision] = update["decisions"]
    assert (decision.kind, decision.outcome, decision.strategy, decision.escalated) == (
        "validate",
        "ok",
        "checks",
        False,
    )


def test_pii_is_redacted_in_text_and_the_decision_keeps_what_was_found():
    update = run(create_output_validator([pii_check()]), "Card 4111 1111 1111 1111 is on file; call +1 555 123 4567.")
    assert update["output"] == "Card [CARD_NUMBER] is on file; call [PHONE]."
    report = update["validation"]
    assert report.outcome == "redacted" and report.passed
    assert [v.message for v in report.violations] == ["contains card number", "contains phone"]
    assert update["decisions"][0].metadata["report"]["violations"][0]["check"] == "pii"


def test_pii_inside_a_structured_output_is_redacted_field_by_field():
    reply = Reply(order_id="4587345", message="We emailed jo@example.com.")
    update = run(create_output_validator([pii_check(), schema_check(Reply)]), reply)
    assert update["output"] == Reply(order_id="4587345", message="We emailed [EMAIL].")
    assert update["validation"].violations[0].path == ("message",)


def test_redaction_that_would_break_the_schema_is_not_applied_and_the_output_is_flagged():
    # A card number in a digits-only field: masking it would make the instance invalid.
    reply = Reply(order_id="4111111111111111", message="ok")
    update = run(create_output_validator([pii_check(), schema_check(Reply)]), reply)
    report = update["validation"]
    assert update["output"] is None
    assert report.flagged and report.outcome == "flagged"
    assert report.candidate == reply
    assert report.reason == "still failing pii after check, redact"


def test_schema_check_reads_json_text_dicts_and_instances():
    check = schema_check(SupportTicket)
    assert check('{"order_id": "4587345"}') == []
    assert check({"order_id": "12"}) == [
        Violation(check="schema", message="String should match pattern '^\\d{4,20}$'", path=("order_id",))
    ]
    assert check(SupportTicket(order_id="4587345")) == []
    assert [v.path for v in check('{"refund_amount": -3}')] == [("refund_amount",)]


def test_length_bounds():
    check = length_check(min_chars=3, max_chars=10)
    assert check("  ok?  ") == []
    assert [v.message for v in check("no")] == ["2 characters, fewer than 3"]
    assert [v.message for v in check("x" * 11)] == ["11 characters, more than 10"]
    with pytest.raises(ValueError, match="below min_chars"):
        length_check(min_chars=5, max_chars=2)


def test_forbidden_patterns_flag_or_redact():
    patterns = {"internal_url": r"https?://intranet\.\S+"}
    text = "See https://intranet.example/tickets/9 for details."
    flagged = run(create_output_validator([pattern_check(patterns)]), text)
    assert flagged["output"] is None and flagged["validation"].flagged
    assert "internal_url" in flagged["validation"].violations[0].message
    redacted = run(create_output_validator([pattern_check(patterns, redactable=True)]), text)
    assert redacted["output"] == "See [INTERNAL_URL] for details."


def test_a_user_supplied_check_joins_the_built_in_ones():
    class MentionsOrder:
        name = "mentions_order"

        def __call__(self, value: Any) -> list[Violation]:
            return [] if "order" in value else [Violation(check=self.name, message="does not mention the order")]

    validator = create_output_validator([MentionsOrder(), pii_check()])
    assert run(validator, "Your order ships today.")["validation"].passed
    report = run(validator, "It ships today.")["validation"]
    assert report.flagged and report.reason == "still failing mentions_order after check"


def test_regenerate_is_called_with_the_violations_until_the_output_passes():
    calls: list[tuple[str, list[str]]] = []

    def shorten(state, rejected, violations):
        calls.append((rejected, [v.check for v in violations]))
        return rejected[: len(rejected) // 2]

    validator = create_output_validator([length_check(max_chars=10)], regenerate=shorten, max_regenerations=3)
    update = run(validator, "x" * 30)
    assert update["output"] == "x" * 7
    assert calls == [("x" * 30, ["length"]), ("x" * 15, ["length"])]
    assert update["validation"].outcome == "regenerated"
    assert [s.action for s in update["validation"].steps] == ["check", "regenerate", "regenerate"]
    assert update["decisions"][0].strategy == "regenerate"


def test_regenerated_output_is_redacted_too():
    validator = create_output_validator(
        [pii_check(), length_check(max_chars=40)],
        regenerate=lambda state, rejected, violations: "Short reply to jo@example.com.",
    )
    update = run(validator, "A very long reply that goes on and on and on and on.")
    assert update["output"] == "Short reply to [EMAIL]."
    assert update["validation"].outcome == "regenerated"


def test_regeneration_is_bounded_then_the_output_is_flagged():
    calls = []

    def still_too_long(state, rejected, violations):
        calls.append(rejected)
        return rejected + "!"

    validator = create_output_validator([length_check(max_chars=5)], regenerate=still_too_long, max_regenerations=2)
    update = run(validator, "far too long")
    report = update["validation"]
    assert len(calls) == 2
    assert update["output"] is None
    assert report.flagged and report.candidate == "far too long!!"
    assert report.reason == "still failing length after check, regenerate, regenerate"
    decision = update["decisions"][0]
    assert (decision.outcome, decision.strategy, decision.escalated, decision.output) == (
        "flagged",
        "human",
        True,
        None,
    )


def test_a_failing_regenerate_callable_ends_in_a_flag_not_a_crash():
    def broken(state, rejected, violations):
        raise TimeoutError("model server down")

    update = run(create_output_validator([length_check(max_chars=3)], regenerate=broken), "too long")
    steps = update["validation"].steps
    assert update["validation"].flagged
    assert steps[-1].action == "regenerate" and steps[-1].error == "model server down"


def test_regenerate_sees_the_graph_state():
    seen = {}

    def regenerate(state, rejected, violations):
        seen.update(state)
        return f"About order {state['order_id']}."

    validator = create_output_validator([length_check(min_chars=5)], regenerate=regenerate)
    update = validator({"draft": "?", "order_id": "4587345"}, {})
    assert update["output"] == "About order 4587345." and seen["order_id"] == "4587345"


@pytest.mark.parametrize("draft", [None, "", "   \n"])
def test_missing_output_is_a_clear_error_and_is_logged(tmp_path, draft):
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    validator = create_output_validator([pii_check()], decision_log=log)
    with pytest.raises(EmptyInputError, match=r"output \(state\['draft'\]\) is empty"):
        validator({"draft": draft}, {})
    [decision] = log.decisions(node="output_validator")
    assert decision.outcome == "rejected"


def test_configuration_errors_are_caught_when_the_node_is_built():
    with pytest.raises(ValueError, match="at least one check"):
        create_output_validator([])
    with pytest.raises(ValueError, match="distinct"):
        create_output_validator([pii_check(), pii_check()])
    with pytest.raises(ValueError, match="negative"):
        create_output_validator([pii_check()], max_regenerations=-1)


def test_every_outcome_is_written_to_the_decision_log(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    validator = create_output_validator([pii_check(), length_check(max_chars=30)], decision_log=log, name="reply_check")
    for draft in ["Fine.", "Mail jo@example.com.", "This reply is much longer than thirty characters."]:
        validator({"draft": draft}, {"configurable": {"thread_id": "t-1"}})
    decisions = list(log.decisions(node="reply_check", kind="validate"))
    assert [d.outcome for d in decisions] == ["ok", "redacted", "flagged"]
    assert {d.thread_id for d in decisions} == {"t-1"}
    assert json.loads(decisions[1].model_dump_json())["output"] == "Mail [EMAIL]."


class ReplyState(DecisionState, total=False):
    draft: str
    output: str | None
    validation: ValidationReport


def test_in_a_graph_a_flagged_output_waits_for_a_human_and_resumes(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "decisions.db")

    def human_review(state: ReplyState) -> dict[str, Any]:
        report = state["validation"]
        return {"output": interrupt({"candidate": report.candidate, "reason": report.reason})}

    graph = StateGraph(ReplyState)
    graph.add_node("validate", create_output_validator([length_check(max_chars=20)], decision_log=log))
    graph.add_node("human_review", human_review)
    graph.add_edge(START, "validate")
    graph.add_conditional_edges("validate", lambda s: "human_review" if s["validation"].flagged else END)
    graph.add_edge("human_review", END)
    app = graph.compile(checkpointer=InMemorySaver())

    config = {"configurable": {"thread_id": "review-1"}}
    paused = app.invoke({"draft": "This draft is far too long to send."}, config)
    [pending] = paused["__interrupt__"]
    assert pending.value == {
        "candidate": "This draft is far too long to send.",
        "reason": "still failing length after check",
    }
    done = app.invoke(Command(resume="Short reply."), config)
    assert done["output"] == "Short reply."
    assert [d.outcome for d in done["decisions"]] == ["flagged"]
    assert [d.thread_id for d in log.decisions()] == ["review-1"]

    passed = app.invoke({"draft": "Fine."}, {"configurable": {"thread_id": "review-2"}})
    assert passed["output"] == "Fine." and "__interrupt__" not in passed
