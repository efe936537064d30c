"""The consequence modeler: classification, exactly-once execution, approvals, faults, restarts and races; what
LangGraph's ToolNode gives the guarded node (injected state and runtime, Command results, async and parallel calls,
the guard as a plain hook) and a tool call made from an extracted object.

Side effects are counted in the tools' own database (:mod:`consequence_shop`). Every test that uses the
idempotency store runs on SQLite and on a real PostgreSQL server (``backend``), restarts and races included.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from typing import Annotated

import pytest
from consequence_shop import (
    POLICY,
    TABLE_OF,
    Clock,
    Shop,
    ShopState,
    SimulatedCrash,
    open_checkpointer,
    race,
    shop_graph,
    tool_calls,
)
from consequence_worker import WORKER_THREAD, run_worker
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolArg, InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode, ToolRuntime
from langgraph.types import Command, Send, interrupt
from pydantic import BaseModel

from agentgraph.errors import (
    ConfigError,
    IdempotencyConflictError,
    MissingThreadIdError,
    NoToolCallsError,
    ToolArgumentsError,
    ToolCallIdError,
)
from agentgraph.idempotency import DEFAULT_LEASE_S, derive_idempotency_key, open_idempotency_store, request_fingerprint
from agentgraph.nodes.consequence import (
    CONSEQUENCE_DESCRIPTIONS,
    REQUEST_CHARS,
    ConsequenceGuard,
    ConsequencePolicy,
    GuardedToolNode,
    calibrate,
    classify_tool_call,
    content_free_prior,
    create_guarded_tool_node,
    tool_call_from,
)
from agentgraph.records.decisions import SQLiteDecisionLog
from agentgraph.write_safety import WriteConsent

LEASE_S = 60.0
CREDIT = ("add_credit", {"customer": "ana", "amount": 5.0, "reference": "credit-1"})
CHARGE = ("charge_card", {"customer": "ana", "amount": 20.0, "reference": "charge-1"})
REFUND = ("refund_order", {"order_id": "A1", "amount": 30.0, "reference": "refund-1"})
LOOKUP = ("get_order", {"order_id": "A1"})
APPROVE = {"decisions": [{"type": "approve"}]}
CONSENT = WriteConsent(label="refund", how="requested", request="please refund order A1")


def thread(name: str) -> dict:
    return {"configurable": {"thread_id": name}}


@pytest.fixture
def shop(tmp_path) -> Shop:
    shop = Shop(tmp_path / "shop.db")
    yield shop
    shop.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request) -> str:
    """The database the idempotency keys and the durable checkpoints live in."""
    return request.param


@pytest.fixture
def keys_at(backend, tmp_path, request) -> str:
    """Where the idempotency keys live: a SQLite file, or a fresh database on a real PostgreSQL server."""
    return str(tmp_path / "keys.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def checkpoints_at(backend, tmp_path, request) -> str:
    """Where durable checkpoints live: a SQLite file, or the keys' fresh PostgreSQL database."""
    return str(tmp_path / "checkpoints.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def store(keys_at):
    store = open_idempotency_store(keys_at)
    yield store
    store.close()


@pytest.fixture
def decision_log(tmp_path) -> SQLiteDecisionLog:
    return SQLiteDecisionLog(tmp_path / "decisions.db")


def _tool(name: str, description: str, metadata: dict | None = None):
    made = tool(name, description=description)(lambda target: "ok")
    made.metadata = metadata
    return made


# --- classification ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "hints", "expected"),
    [
        ("irreversible", {"readOnlyHint": True}, "irreversible"),
        ("safe", {"readOnlyHint": False, "destructiveHint": True}, "irreversible"),
        ("retry_safe", {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": False}, "retry_unsafe"),
        ("retry_unsafe", {"readOnlyHint": True}, "retry_unsafe"),
        ("safe", {}, "safe"),
    ],
)
def test_annotations_can_make_a_listed_tool_more_cautious_never_less(listed, hints, expected):
    declared = _tool("purge_cache", "Purges the cache.", hints)

    verdict = classify_tool_call(declared, {"target": "x"}, policy=ConsequencePolicy(tools={"purge_cache": listed}))

    assert (verdict.consequence, verdict.strategy, verdict.confidence) == (expected, "policy", None)
    assert verdict.hints == hints


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"readOnlyHint": True, "openWorldHint": True}, "safe"),
        ({"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True}, "retry_safe"),
        ({"readOnlyHint": False, "destructiveHint": False}, "retry_unsafe"),
        ({"idempotentHint": True}, "irreversible"),  # MCP default: a tool not read-only may be destructive
        ({"annotations": {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True}}, "retry_safe"),
        # langchain-mcp-adapters stores every annotation field, unset ones as None
        ({"title": None, "readOnlyHint": True, "destructiveHint": None, "idempotentHint": None}, "safe"),
    ],
)
def test_annotations_alone_classify_a_tool_the_policy_does_not_list(metadata, expected):
    verdict = classify_tool_call(
        _tool("do_thing", "Does a thing.", metadata), {"target": "x"}, policy=ConsequencePolicy()
    )

    assert (verdict.consequence, verdict.strategy) == (expected, "annotations")


def test_policy_patterns_match_in_order_and_exact_names_win():
    policy = ConsequencePolicy(tools={"delete_*": "irreversible", "delete_draft": "retry_safe", "*": "retry_unsafe"})

    assert policy.lookup("delete_user") == "irreversible"
    assert policy.lookup("delete_draft") == "retry_safe"
    assert policy.lookup("send_mail") == "retry_unsafe"
    assert ConsequencePolicy().lookup("send_mail") is None


def test_a_call_unknown_to_the_policy_goes_to_the_llm_and_hints_still_raise_caution():
    hinted = _tool("sync_mailbox", "Syncs a mailbox.", {"readOnlyHint": False, "destructiveHint": True})
    policy = ConsequencePolicy(tools={"sync_mailbox": "unknown"})
    llm = FakeMessagesListChatModel(responses=[AIMessage("safe"), AIMessage("unused")])

    verdict = classify_tool_call(hinted, {"target": "inbox"}, policy=policy, llm=llm)

    assert (verdict.consequence, verdict.strategy, verdict.escalated) == ("irreversible", "llm", True)
    assert llm.i == 1, "the LLM was asked once"


@pytest.mark.parametrize(
    ("answers", "expected", "strategy"),
    [
        (["retry_safe"], "retry_safe", "llm"),
        (["It is retry_unsafe, I think."], "retry_unsafe", "llm"),
        (["safe or irreversible, hard to say"], "irreversible", "fallback"),
        (None, "irreversible", "fallback"),
    ],
)
def test_an_unknown_call_takes_the_llm_verdict_or_the_most_cautious_class(answers, expected, strategy):
    llm = FakeMessagesListChatModel(responses=[AIMessage(a) for a in answers]) if answers else None
    undeclared = _tool("frobnicate", "Frobnicates a widget.")

    verdict = classify_tool_call(
        undeclared, {"target": "w1"}, policy=ConsequencePolicy(tools={"frobnicate": "unknown"}), llm=llm
    )

    assert (verdict.consequence, verdict.strategy) == (expected, strategy)
    assert verdict.escalated is (llm is not None)


def test_calibration_divides_out_the_models_own_bias():
    biased_prior = {"safe": 0.94, "retry_safe": 0.02, "retry_unsafe": 0.02, "irreversible": 0.02}
    answer = {"safe": 0.90, "retry_safe": 0.02, "retry_unsafe": 0.02, "irreversible": 0.06}

    calibrated = calibrate(answer, biased_prior)

    assert max(calibrated, key=calibrated.get) == "irreversible", "only irreversible rose above the prior"
    assert sum(calibrated.values()) == pytest.approx(1.0)
    assert calibrate(biased_prior, biased_prior) == pytest.approx(dict.fromkeys(biased_prior, 0.25))


@pytest.mark.slow
def test_the_slm_classifies_an_undeclared_tool_with_calibrated_token_probabilities(embedded_slm):
    undeclared = _tool("lookup_invoice", "Returns the invoice with this number. Changes nothing.")

    verdict = classify_tool_call(
        undeclared, {"target": "INV-1"}, policy=ConsequencePolicy(confidence_threshold=0.0), slm=embedded_slm
    )

    assert verdict.strategy == "slm"
    assert set(verdict.probabilities) == set(CONSEQUENCE_DESCRIPTIONS)
    assert sum(verdict.probabilities.values()) == pytest.approx(1.0)
    assert verdict.confidence == max(verdict.probabilities.values())
    assert verdict.probabilities[verdict.consequence] == verdict.confidence
    assert verdict.model == embedded_slm.model_name
    assert content_free_prior(embedded_slm)["safe"] > 0.5, "the packaged SLM leans to 'safe' for any call"


@pytest.mark.slow
def test_an_unsure_slm_escalates_to_the_llm(embedded_slm):
    undeclared = _tool("lookup_invoice", "Returns the invoice with this number. Changes nothing.")
    llm = FakeMessagesListChatModel(responses=[AIMessage("safe")])

    verdict = classify_tool_call(
        undeclared, {"target": "INV-1"}, policy=ConsequencePolicy(confidence_threshold=1.0), slm=embedded_slm, llm=llm
    )

    assert (verdict.consequence, verdict.strategy, verdict.escalated) == ("safe", "llm", True)
    assert "the SLM was unsure" in verdict.reason
    assert set(verdict.probabilities) == set(CONSEQUENCE_DESCRIPTIONS), "the SLM's distribution is kept"


# --- execution by class ------------------------------------------------------------------------------------


def test_each_class_runs_as_allowed_and_every_call_is_logged(shop, store, decision_log):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), decision_log=decision_log)

    result = graph.invoke(tool_calls(LOOKUP, CREDIT, CHARGE), thread("t1"))

    lookup, credit, charge = result["messages"][1:]
    assert lookup.content == "order A1: shipped"
    assert (credit.content, charge.status) == ("credited 5.0 to ana", "success")
    assert (shop.count("credits"), shop.count("charges")) == (1, 1)
    logged = list(decision_log.decisions(node="guarded_tools", kind="classify_tool"))
    assert [(d.output, d.strategy, d.outcome) for d in logged] == [
        ("safe", "policy", "executed"),
        ("retry_safe", "policy", "executed"),
        ("retry_unsafe", "policy", "executed"),
    ]
    assert [d.id for d in logged] == [d.id for d in result["decisions"]]
    assert all(d.thread_id == "t1" and d.metadata["prompt"] == "consequence.v1" for d in logged)
    assert "idempotency_key" not in logged[0].metadata
    assert logged[1].metadata["idempotency_key"] == credit.response_metadata["idempotency_key"]


def test_the_same_call_again_in_the_thread_returns_the_recorded_result(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    first = graph.invoke(tool_calls(CREDIT, CHARGE), thread("t1"))

    again = graph.invoke(tool_calls(CREDIT, CHARGE), thread("t1"))

    assert [m.content for m in again["messages"][-2:]] == [m.content for m in first["messages"][1:]]
    assert [d.outcome for d in again["decisions"][-2:]] == ["replayed", "replayed"]
    assert all(m.response_metadata["replayed"] for m in again["messages"][-2:])
    assert dict(shop.runs) == {"add_credit": 1, "charge_card": 1}
    assert (shop.count("credits"), shop.count("charges")) == (1, 1)
    graph.invoke(tool_calls(CHARGE), thread("t2"))
    assert shop.count("charges") == 2, "another thread is another key"


def test_a_retry_safe_tool_that_commits_then_raises_is_retried_without_a_duplicate(shop, store):
    shop.inject("add_credit", "fail_after_commit", "fail_before")
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    result = graph.invoke(tool_calls(CREDIT), thread("t1"))

    assert result["messages"][-1].content == "credited 5.0 to ana"
    assert shop.runs["add_credit"] == 3, "RetryPolicy ran the node three times"
    assert shop.count("credits", "credit-1") == 1
    assert store.get(result["messages"][-1].response_metadata["idempotency_key"]).status == "completed"


def test_a_retry_unsafe_failure_is_flagged_back_to_the_loop_and_never_retried(shop, store):
    shop.inject("charge_card", "fail_after_commit")
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    result = graph.invoke(tool_calls(CHARGE), thread("t1"))
    again = graph.invoke(tool_calls(CHARGE), thread("t1"))

    for message in (result["messages"][-1], again["messages"][-1]):
        assert message.status == "error"
        assert message.response_metadata["retry_blocked"] is True
        assert "connection dropped" in message.content
    assert [result["decisions"][-1].outcome, again["decisions"][-1].outcome] == ["failed", "replayed"]
    assert shop.runs["charge_card"] == 1, "neither RetryPolicy nor a repeated call ran it again"
    assert shop.count("charges", "charge-1") == 1


def test_a_failure_recorded_by_the_previous_release_is_still_replayed(shop, store):
    name, arguments = CHARGE
    old = store.begin(derive_idempotency_key("t1", name, arguments), request_fingerprint(name, arguments))
    store.fail(old, "ConnectionError: the connection dropped")  # then, a failure's record was its text alone

    result = shop_graph(shop, store).invoke(tool_calls(CHARGE), thread("t1"))

    message = result["messages"][-1]
    assert (result["decisions"][-1].outcome, message.response_metadata["retry_blocked"]) == ("replayed", True)
    assert "the connection dropped" in message.content and shop.runs == {}


def test_unknown_tools_and_invalid_arguments_are_refused_before_anything_runs(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    result = graph.invoke(
        tool_calls(
            ("teleport", {}),
            ("charge_card", {"customer": "ana", "amount": "lots", "reference": "r"}),
            ("charge_card", {"customer": "ana", "amount": float("nan"), "reference": "r"}),
        ),
        thread("t1"),
    )

    unknown, invalid, not_a_number = result["messages"][1:]
    assert unknown.status == invalid.status == not_a_number.status == "error"
    assert "not a valid tool" in unknown.content and "get_order" in unknown.content
    assert "invalid arguments" in invalid.content
    assert "must be finite" in not_a_number.content
    assert [(d.output, d.outcome) for d in result["decisions"]] == [
        (None, "unknown_tool"),
        (None, "invalid_arguments"),
        (None, "invalid_arguments"),
    ]
    assert shop.runs == {} and shop.count("charges") == 0


def test_bad_state_and_a_missing_thread_id_get_clear_errors(shop, store):
    with pytest.raises(NoToolCallsError, match="no AI message with tool calls"):
        shop_graph(shop, store).invoke({"messages": [AIMessage("just text")]})
    with pytest.raises(MissingThreadIdError, match="thread_id"):
        shop_graph(shop, store).invoke(tool_calls(CHARGE))
    assert shop_graph(shop, store).invoke(tool_calls(LOOKUP))["messages"][-1].content == "order A1: shipped"
    assert shop.count("charges") == 0


def test_a_caller_given_key_holds_across_threads(shop, store):
    node = create_guarded_tool_node(
        shop.tools(),
        policy=POLICY,
        idempotency_store=store,
        key_for=lambda call, thread_id: f"charge:{call['args']['reference']}",
    )
    graph = StateGraph(ShopState).add_node("tools", node).add_edge(START, "tools").compile()

    graph.invoke(tool_calls(CHARGE), thread("t1"))
    replayed = graph.invoke(tool_calls(CHARGE), thread("t2"))

    assert replayed["decisions"][-1].metadata["idempotency_key"] == "charge:charge-1"
    assert replayed["decisions"][-1].outcome == "replayed"
    assert shop.count("charges") == 1


# --- approvals ---------------------------------------------------------------------------------------------


def test_an_irreversible_call_waits_for_approval_with_a_renderable_request(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    paused = graph.invoke(tool_calls(CREDIT, REFUND), thread("t1"))

    (pending,) = paused["__interrupt__"]
    (request,) = pending.value["action_requests"]
    (review,) = pending.value["review_configs"]
    assert (request["name"], request["arguments"], request["tool_call_id"]) == (
        "refund_order",
        REFUND[1],
        "call-1-refund_order",
    )
    assert "Refund money" in request["description"] and "irreversible" in request["description"]
    assert review["allowed_decisions"] == ["approve", "edit", "reject"]
    assert review["editable_arguments"] == ["amount"]
    assert set(review["arguments_schema"]["properties"]) == {"order_id", "amount", "reference"}
    assert shop.runs == {}, "nothing runs before the person has decided"

    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    assert done["messages"][-1].content == "refunded 30.0 for A1"
    assert done["decisions"][-1].metadata["approval"] == "approve"
    assert (shop.count("refunds", "refund-1"), shop.count("credits", "credit-1")) == (1, 1)


def test_an_edited_approval_runs_with_the_edited_arguments(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(REFUND), thread("t1"))
    edited = {**REFUND[1], "amount": 12.5}

    done = graph.invoke(
        Command(
            resume={"decisions": [{"type": "edit", "edited_action": {"name": "refund_order", "arguments": edited}}]}
        ),
        thread("t1"),
    )

    assert done["messages"][-1].content == "refunded 12.5 for A1"
    assert shop.amounts("refunds", "refund-1") == [12.5]
    assert done["decisions"][-1].metadata["edited_arguments"] == edited
    redelivered = graph.invoke(tool_calls(REFUND), thread("t1"))
    assert "__interrupt__" not in redelivered, "a decided call is not put to a person again"
    assert redelivered["messages"][-1].content == "refunded 12.5 for A1"
    assert shop.amounts("refunds", "refund-1") == [12.5]


def test_a_rejected_call_never_runs(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(LOOKUP, REFUND), thread("t1"))

    done = graph.invoke(Command(resume={"decisions": [{"type": "reject", "message": "too much"}]}), thread("t1"))

    rejected = done["messages"][-1]
    assert (rejected.status, rejected.response_metadata["error"]) == ("error", "rejected")
    assert "too much" in rejected.content
    assert done["decisions"][-1].outcome == "rejected"
    assert done["messages"][-2].content == "order A1: shipped"
    redelivered = graph.invoke(tool_calls(LOOKUP, REFUND), thread("t1"))
    assert "__interrupt__" not in redelivered, "the rejection is recorded for the call"
    assert redelivered["decisions"][-1].outcome == "replayed" and "too much" in redelivered["messages"][-1].content
    assert redelivered["messages"][-1].response_metadata["error"] == "rejected", "a replayed rejection is one"
    assert "retry_blocked" not in redelivered["messages"][-1].response_metadata
    assert shop.runs.get("refund_order", 0) == 0 and shop.count("refunds") == 0


def test_an_answer_that_does_not_fit_is_asked_again_and_loses_nothing(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(CHARGE, REFUND), thread("t1"))

    for wrong, complaint in [
        ("yes", "resume with"),
        ({"decisions": [{"type": "maybe"}]}, "approve, edit"),
        ({"decisions": [{"type": "approve"}, {"type": "approve"}]}, "2 decisions for 1"),
        ({"decisions": [{"type": "edit", "edited_action": {"name": "charge_card", "arguments": {}}}]}, "not the tool"),
    ]:
        asked_again = graph.invoke(Command(resume=wrong), thread("t1"))
        (pending,) = asked_again["__interrupt__"]
        assert complaint in pending.value["error"]
        assert pending.value["action_requests"][0]["arguments"] == REFUND[1]
    assert shop.runs == {}, "nothing ran while the answer did not fit"

    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    assert done["messages"][-1].content == "refunded 30.0 for A1"
    assert [d.outcome for d in done["decisions"]] == ["executed", "executed"]
    assert dict(shop.runs) == {"charge_card": 1, "refund_order": 1}, "five re-executions of the node, one run each"
    assert (shop.count("charges"), shop.count("refunds")) == (1, 1)


def test_classifications_are_checkpointed_so_a_resume_does_not_ask_the_llm_again(shop, store):
    @tool
    def wire_money(account: str, amount: float) -> str:
        """Wire money to an account."""
        return f"wired {amount} to {account}"

    llm = FakeMessagesListChatModel(responses=[AIMessage("irreversible"), AIMessage("safe")])
    node = create_guarded_tool_node(
        [wire_money], policy=ConsequencePolicy(tools={"wire_money": "unknown"}), llm=llm, idempotency_store=store
    )
    graph = StateGraph(ShopState).add_node("tools", node).add_edge(START, "tools").compile(checkpointer=InMemorySaver())

    graph.invoke(tool_calls(("wire_money", {"account": "X", "amount": 1.0})), thread("t1"))
    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    assert llm.i == 1, "the resumed node reused the first verdict (a second call would wrap i back to 0)"
    assert (done["decisions"][-1].strategy, done["decisions"][-1].outcome) == ("llm", "executed")


def _edit(arguments: dict, name: str = "refund_order") -> dict:
    return {"decisions": [{"type": "edit", "edited_action": {"name": name, "arguments": arguments}}]}


@pytest.mark.slow  # two processes per answer
@pytest.mark.parametrize(
    ("answer", "outcome", "reply", "refunds"),
    [
        (APPROVE, "executed", "refunded 30.0 for A1", [30.0]),
        ({"decisions": [{"type": "reject", "message": "never paid"}]}, "rejected", "never paid", []),
        (_edit({**REFUND[1], "amount": 12.5}), "executed", "refunded 12.5 for A1", [12.5]),
    ],
    ids=["approve", "reject", "edit"],
)
def test_a_pending_approval_raised_in_one_process_is_answered_in_another(
    tmp_path, keys_at, checkpoints_at, answer, outcome, reply, refunds
):
    asked = run_worker(tmp_path, "ask", [CREDIT, REFUND], keys_at=keys_at, checkpoints_at=checkpoints_at)
    assert asked.returncode == 0, asked.stderr
    (request,) = json.loads(asked.stdout)
    assert (request["name"], request["arguments"]) == REFUND
    shop = Shop(tmp_path / "shop.db")
    assert (shop.count("credits"), shop.count("refunds")) == (0, 0), "nothing runs before the person has decided"

    answered = run_worker(tmp_path, "answer", answer, keys_at=keys_at, checkpoints_at=checkpoints_at)

    assert answered.returncode == 0, answered.stderr
    assert reply in json.loads(answered.stdout)["content"]
    assert shop.amounts("refunds", "refund-1") == refunds and shop.count("credits", "credit-1") == 1
    credit, refund = SQLiteDecisionLog(tmp_path / "decisions.db").decisions(node="guarded_tools", kind="classify_tool")
    assert (credit.output, credit.outcome) == ("retry_safe", "executed")
    assert (refund.output, refund.outcome) == ("irreversible", outcome)
    assert refund.metadata["approval"] == answer["decisions"][0]["type"]
    shop.close()


def test_an_edit_may_change_only_what_the_policy_lists_and_a_refused_edit_uses_nothing_up(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(REFUND), thread("t1"))

    for edited in [{**REFUND[1], "order_id": "B2"}, {**REFUND[1], "amount": 1.0, "reference": "mine"}, {"amount": 1.0}]:
        (pending,) = graph.invoke(Command(resume=_edit(edited)), thread("t1"))["__interrupt__"]
        assert "may change only ['amount']" in pending.value["error"]
    assert shop.runs == {}, "no refused edit reached the tool"

    done = graph.invoke(Command(resume=_edit({**REFUND[1], "amount": 2.5})), thread("t1"))

    assert done["messages"][-1].content == "refunded 2.5 for A1"
    assert shop.amounts("refunds", "refund-1") == [2.5] and shop.count("refunds") == 1


def test_a_tool_with_nothing_editable_takes_approvals_and_rejections_only(shop, store):
    fixed = POLICY.model_copy(update={"editable": {}})
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), policy=fixed)
    (pending,) = graph.invoke(tool_calls(REFUND), thread("t1"))["__interrupt__"]
    assert pending.value["review_configs"][0]["allowed_decisions"] == ["approve", "reject"]

    (asked_again,) = graph.invoke(Command(resume=_edit({**REFUND[1], "amount": 1.0})), thread("t1"))["__interrupt__"]

    assert "nothing in `refund_order` is editable" in asked_again.value["error"]
    assert graph.invoke(Command(resume=APPROVE), thread("t1"))["messages"][-1].content == "refunded 30.0 for A1"


@pytest.mark.parametrize(
    ("amount", "complaint"),
    [
        ("lots", "valid number"),
        (-5.0, "greater than or equal to 0"),
        (1e9, "less than or equal to 10000"),
        ("nan", "less than or equal to 10000"),  # a NaN compares false with every bound
    ],
)
def test_an_edit_the_tool_would_refuse_is_asked_again_and_never_reaches_the_tool(shop, store, amount, complaint):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(REFUND), thread("t1"))

    (pending,) = graph.invoke(Command(resume=_edit({**REFUND[1], "amount": amount})), thread("t1"))["__interrupt__"]

    assert "the edited arguments of `refund_order` do not fit" in pending.value["error"]
    assert complaint in pending.value["error"]
    assert shop.runs == {} and shop.count("refunds") == 0
    done = graph.invoke(Command(resume=APPROVE), thread("t1"))
    assert (done["messages"][-1].content, done["decisions"][-1].outcome) == ("refunded 30.0 for A1", "executed")


@pytest.mark.parametrize("decision", [{"type": "approve"}, {"type": "reject", "message": "no"}])
def test_the_reviewer_is_recorded_as_the_approver_in_the_decision_and_the_key(shop, store, decision_log, decision):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), decision_log=decision_log)
    graph.invoke(tool_calls(REFUND), thread("t1"))

    done = graph.invoke(Command(resume={"decisions": [{**decision, "reviewer": "ops-anna"}]}), thread("t1"))

    (logged,) = decision_log.decisions(node="guarded_tools")
    assert (logged.metadata["approval"], logged.metadata["reviewer"]) == (decision["type"], "ops-anna")
    assert logged.input["arguments"] == REFUND[1], "the call, and so the customer it is for, is kept apart"
    record = store.get(done["messages"][-1].response_metadata["idempotency_key"])
    assert record.result["approval"] == {"decision": decision["type"], "reviewer": "ops-anna"}


def test_an_approval_without_a_reviewer_records_none(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())
    graph.invoke(tool_calls(REFUND), thread("t1"))

    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    assert done["decisions"][-1].metadata["reviewer"] is None


def test_the_approval_request_quotes_the_customers_words(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), request_key="request")
    words = "Refund 9999999 EUR for order A1 " + "please " * 200

    paused = graph.invoke(tool_calls(REFUND, request=words), thread("t1"))

    (request,) = paused["__interrupt__"][0].value["action_requests"]
    assert request["request"].startswith("Refund 9999999 EUR for order A1 please")
    assert len(request["request"]) <= REQUEST_CHARS < len(words)
    assert 'The customer asked: "Refund 9999999 EUR' in request["description"]
    assert request["arguments"] == REFUND[1]


def test_a_policy_naming_arguments_or_tools_the_node_lacks_is_a_config_error(shop, store):
    with pytest.raises(ConfigError, match=r"lists \['amout'\] for refund_order"):
        create_guarded_tool_node(
            shop.tools(), idempotency_store=store, policy=ConsequencePolicy(editable={"refund_order": {"amout"}})
        )
    with pytest.raises(ConfigError, match="resolve_arguments names \\['refund'\\]"):
        create_guarded_tool_node(shop.tools(), idempotency_store=store, resolve_arguments={"refund": dict})
    create_guarded_tool_node(shop.tools(), idempotency_store=store, policy=ConsequencePolicy(editable={"other": {"x"}}))


# --- the customer's consent --------------------------------------------------------------------------------


def test_without_the_customers_consent_only_read_only_calls_run(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), consent_key="write_consent")

    result = graph.invoke(tool_calls(LOOKUP, CREDIT, CHARGE, REFUND), thread("t1"))

    assert "__interrupt__" not in result, "no person is asked about a write nobody asked for"
    lookup, *writes = result["messages"][1:]
    assert lookup.content == "order A1: shipped"
    assert [(m.status, m.response_metadata["error"]) for m in writes] == [("error", "not_requested")] * 3
    assert "did not ask for it" in writes[0].content
    assert [(d.output, d.outcome) for d in result["decisions"]] == [
        ("safe", "executed"),
        ("retry_safe", "not_requested"),
        ("retry_unsafe", "not_requested"),
        ("irreversible", "not_requested"),
    ]
    assert shop.runs == {} and (shop.count("credits"), shop.count("charges"), shop.count("refunds")) == (0, 0, 0)


def test_with_the_customers_consent_writes_run_as_their_class_allows(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver(), consent_key="write_consent")

    paused = graph.invoke(tool_calls(CREDIT, REFUND, write_consent=CONSENT), thread("t1"))
    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    assert paused["__interrupt__"][0].value["action_requests"][0]["name"] == "refund_order", "consent is no approval"
    assert [d.outcome for d in done["decisions"]] == ["executed", "executed"]
    assert (shop.count("credits"), shop.count("refunds")) == (1, 1)


# --- process death -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("call", "outcome", "status"),
    [(CREDIT, "recovered", "success"), (CHARGE, "outcome_unknown", "error")],
    ids=["retry_safe", "retry_unsafe"],
)
def test_a_process_killed_between_executing_and_recording(tmp_path, keys_at, checkpoints_at, call, outcome, status):
    name, arguments = call
    worker = run_worker(tmp_path, "crash", [name, arguments], keys_at=keys_at, checkpoints_at=checkpoints_at)
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    shop = Shop(tmp_path / "shop.db")
    assert shop.count(TABLE_OF[name]) == 1, "the tool committed before the process died"
    clock = Clock(start=time.time() + DEFAULT_LEASE_S + 1)  # the dead worker held the default lease
    store = open_idempotency_store(keys_at, lease_s=LEASE_S, clock=clock)

    with open_checkpointer(checkpoints_at) as saver:
        result = shop_graph(shop, store, checkpointer=saver).invoke(None, WORKER_THREAD)
    store.close()

    message, decision = result["messages"][-1], result["decisions"][-1]
    assert (decision.outcome, message.status) == (outcome, status)
    assert shop.count(TABLE_OF[name]) == 1, "no duplicate side effect after the restart"
    if status == "error":
        assert message.response_metadata["retry_blocked"] is True
    assert shop.runs[name] == (1 if status == "success" else 0), "only the retry-safe call runs again, with its key"


# --- races and randomized faults --------------------------------------------------------------------------


def test_concurrent_duplicate_calls_from_threads_run_once(keys_at, shop):
    shop.inject("charge_card", "slow")
    stores = [open_idempotency_store(keys_at) for _ in range(8)]  # a connection each, as separate workers have
    graphs = [shop_graph(shop, store, retry_policy=None) for store in stores]

    outcomes = race(lambda graph: graph.invoke(tool_calls(CHARGE), thread("shared"))["decisions"][-1].outcome, graphs)
    for store in stores:
        store.close()

    assert outcomes.count("executed") == 1
    assert set(outcomes) <= {"executed", "conflict", "replayed"} and len(outcomes) == len(graphs)
    assert shop.runs["charge_card"] == 1
    assert shop.count("charges", "charge-1") == 1


FAULTS = [(), (), ("fail_before",), ("fail_after_commit",), ("crash_after_commit",), ("fail_after_commit",) * 3]


def _drive(graph_of, restart, rng: random.Random, step: int, config: dict, first_input: dict) -> list[str]:
    """Run one turn to its end through crashes, exhausted retries and approvals; returns the decisions taken."""
    graph_input, decisions = first_input, []
    for _ in range(20):
        try:
            result = graph_of().invoke(graph_input, config)
        except SimulatedCrash:
            restart()
            graph_input = None
            continue
        except ConnectionError:  # RetryPolicy gave up; the caller runs the turn again
            graph_input = None
            continue
        if "__interrupt__" not in result:
            return decisions
        if rng.random() < 0.1:
            graph_input = Command(resume={"decisions": []})
            continue
        choice = rng.choice(["approve", "edit", "reject"])
        decisions.append(choice)
        decision = {"type": choice}
        if choice == "edit":
            arguments = {**result["__interrupt__"][0].value["action_requests"][0]["arguments"], "amount": step + 0.5}
            decision["edited_action"] = {"name": "refund_order", "arguments": arguments}
        graph_input = Command(resume={"decisions": [decision]})
    raise AssertionError(f"step {step} did not finish")


@pytest.mark.slow  # 40-60 s on two busy cores
def test_1000_randomized_retries_and_resumes_cause_no_duplicate_side_effects(keys_at, shop):
    rng = random.Random(20240611)
    clock = Clock()
    # Checkpoints stay in memory across the simulated restarts (real restarts are tested above, on both backends).
    saver = InMemorySaver()
    live = {"store": open_idempotency_store(keys_at, lease_s=LEASE_S, clock=clock), "restarts": 0}
    live["graph"] = shop_graph(shop, live["store"], checkpointer=saver)

    def restart() -> None:
        """A new process: fresh store connection and graph, after the dead worker's lease ran out."""
        live["store"].close()
        clock.advance(LEASE_S + 1)
        live["store"] = open_idempotency_store(keys_at, lease_s=LEASE_S, clock=clock)
        live["graph"] = shop_graph(shop, live["store"], checkpointer=saver)
        live["restarts"] += 1

    expected: dict[str, tuple[str, int, float]] = {}
    for step in range(1000):
        name = rng.choice(["add_credit", "charge_card", "refund_order"])
        reference = f"op-{step}"
        arguments = (
            {"order_id": "A1", "amount": float(step), "reference": reference}
            if name == "refund_order"
            else {"customer": "ana", "amount": float(step), "reference": reference}
        )
        faults = rng.choice(FAULTS)
        shop.inject(name, *faults)
        config = thread(f"thread-{step}")
        taken = _drive(lambda: live["graph"], restart, rng, step, config, tool_calls((name, arguments)))
        if rng.random() < 0.3:  # the same message delivered again
            assert _drive(lambda: live["graph"], restart, rng, step, config, tool_calls((name, arguments))) == []
        shop.clear_faults()
        runs_commit = name == "add_credit" or faults[:1] != ("fail_before",)
        rejected = taken[-1:] == ["reject"]
        amount = step + 0.5 if taken[-1:] == ["edit"] else float(step)
        expected[reference] = (TABLE_OF[name], int(runs_commit and not rejected), amount)
    live["store"].close()

    for reference, (table, rows, amount) in expected.items():
        assert shop.count(table, reference) == rows, reference
        assert shop.amounts(table, reference) == [amount] * rows, reference
    rows_written = sum(rows for _, rows, _ in expected.values())
    assert rows_written > 600
    assert live["restarts"] > 100, "crashes and restarts were exercised"
    assert sum(shop.runs.values()) > rows_written + 200, "tools ran again on retries and recoveries"


# --- what LangGraph's ToolNode gives the guarded node ------------------------------------------------------


class NotedState(ShopState, total=False):
    order_status: str


def _graph(node, state=ShopState, checkpointer=None):
    return StateGraph(state).add_node("tools", node).add_edge(START, "tools").compile(checkpointer=checkpointer)


def test_a_guarded_tool_gets_injected_state_and_runtime_and_its_key_never_a_forged_one(store):
    @tool
    def tag_request(
        tag: str,
        request: Annotated[str, InjectedState("request")],
        runtime: ToolRuntime,
        idempotency_key: Annotated[str, InjectedToolArg],
    ) -> str:
        """Tag the customer's request."""
        thread_id = runtime.config["configurable"]["thread_id"]
        return f"{tag} on {request!r} in {thread_id} for {runtime.tool_call_id} under {idempotency_key}"

    node = create_guarded_tool_node(
        [tag_request], policy=ConsequencePolicy(tools={"tag_request": "retry_safe"}), idempotency_store=store
    )
    call = ("tag_request", {"tag": "vip", "idempotency_key": "forged"})

    result = _graph(node).invoke(tool_calls(call, request="where is A1?"), thread("t1"))

    assert isinstance(node, ToolNode) and isinstance(node, GuardedToolNode)
    message = result["messages"][-1]
    key = message.response_metadata["idempotency_key"]
    assert key == derive_idempotency_key("t1", *call) != "forged"
    assert message.content == f"vip on 'where is A1?' in t1 for call-0-tag_request under {key}"
    assert [(d.output, d.outcome) for d in result["decisions"]] == [("retry_safe", "executed")]


def test_a_tool_that_returns_a_command_updates_the_state_once_and_is_replayed_as_its_message(store):
    runs = []

    @tool
    def set_status(order_id: str, status: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Set an order's status."""
        runs.append(order_id)
        message = ToolMessage(f"{order_id} is {status}", tool_call_id=tool_call_id)
        return Command(update={"order_status": status, "messages": [message]})

    @tool
    def get_status(order_id: str) -> str:
        """Look up an order's status."""
        return f"{order_id}: shipped"

    node = create_guarded_tool_node(
        [set_status, get_status],
        policy=ConsequencePolicy(tools={"set_status": "retry_safe", "get_status": "safe"}),
        idempotency_store=store,
    )
    graph = _graph(node, NotedState, InMemorySaver())
    calls = (("set_status", {"order_id": "A1", "status": "on hold"}), ("get_status", {"order_id": "A1"}))

    first = graph.invoke(tool_calls(*calls), thread("t1"))
    graph.update_state(thread("t1"), {"order_status": "changed by hand"})
    again = graph.invoke(tool_calls(*calls), thread("t1"))

    assert first["order_status"] == "on hold"
    assert [m.content for m in first["messages"][1:]] == ["A1 is on hold", "A1: shipped"], "in call order"
    assert [(d.input["tool"], d.outcome) for d in first["decisions"]] == [
        ("set_status", "executed"),
        ("get_status", "executed"),
    ]
    assert first["messages"][1].response_metadata["consequence"] == "retry_safe"
    assert runs == ["A1"], "the redelivered call did not run again"
    assert again["messages"][-2].content == "A1 is on hold" and again["messages"][-2].response_metadata["replayed"]
    assert again["order_status"] == "changed by hand", "a replay answers with the message; the update ran once"
    assert [d.outcome for d in again["decisions"][-2:]] == ["replayed", "executed"]


def test_async_calls_through_ainvoke_run_exactly_once_and_wait_for_approval(shop, store):
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    async def turn():
        paused = await graph.ainvoke(tool_calls(CHARGE, REFUND), thread("t1"))
        nothing_ran = dict(shop.runs)
        done = await graph.ainvoke(Command(resume=APPROVE), thread("t1"))
        again = await graph.ainvoke(tool_calls(CHARGE, REFUND), thread("t1"))
        return paused, nothing_ran, done, again

    paused, nothing_ran, done, again = asyncio.run(turn())

    assert [r["name"] for r in paused["__interrupt__"][0].value["action_requests"]] == ["refund_order"]
    assert nothing_ran == {}, "no call runs before the person has decided, the retry-unsafe charge included"
    assert [m.content for m in done["messages"][1:]] == ["charge 1: 20.0 from ana", "refunded 30.0 for A1"]
    assert [d.outcome for d in done["decisions"]] == ["executed", "executed"]
    assert "__interrupt__" not in again and [d.outcome for d in again["decisions"][-2:]] == ["replayed", "replayed"]
    assert dict(shop.runs) == {"charge_card": 1, "refund_order": 1}
    assert (shop.count("charges"), shop.count("refunds")) == (1, 1)


def test_concurrent_duplicate_calls_through_ainvoke_run_once(keys_at, shop):
    shop.inject("charge_card", "slow")
    stores = [open_idempotency_store(keys_at) for _ in range(6)]
    graphs = [shop_graph(shop, store, retry_policy=None) for store in stores]

    async def contend():
        return await asyncio.gather(
            *(graph.ainvoke(tool_calls(CHARGE), thread("shared")) for graph in graphs), return_exceptions=True
        )

    results = asyncio.run(contend())
    for store in stores:
        store.close()

    outcomes = ["conflict" if isinstance(r, IdempotencyConflictError) else r["decisions"][-1].outcome for r in results]
    assert outcomes.count("executed") == 1 and set(outcomes) <= {"executed", "conflict", "replayed"}, outcomes
    assert shop.runs["charge_card"] == 1 and shop.count("charges", "charge-1") == 1


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
def test_a_fault_in_one_call_lets_the_others_finish_and_record_before_the_node_fails(shop, store, decision_log, entry):
    @tool
    def flaky_lookup(order_id: str) -> str:
        """Look an order up in a service that is down."""
        raise ConnectionError("the order service is down")

    flaky_lookup.metadata = {"readOnlyHint": True}
    shop.inject("charge_card", "slow")
    node = create_guarded_tool_node(
        [*shop.tools(), flaky_lookup], policy=POLICY, idempotency_store=store, decision_log=decision_log
    )
    graph = _graph(node)
    calls = tool_calls(CHARGE, ("flaky_lookup", {"order_id": "A1"}))

    with pytest.raises(ConnectionError, match="service is down"):
        graph.invoke(calls, thread("t1")) if entry == "invoke" else asyncio.run(graph.ainvoke(calls, thread("t1")))

    assert store.get(derive_idempotency_key("t1", *CHARGE)).status == "completed", "not left in flight"
    assert [d.outcome for d in decision_log.decisions(node="guarded_tools")] == [
        "executed",
        "error: ConnectionError: the order service is down",
    ]
    assert shop.count("charges", "charge-1") == 1


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
def test_the_calls_of_one_message_run_in_parallel_after_one_interrupt_for_all_approvals(shop, store, entry):
    both_running = threading.Barrier(2, timeout=10)  # passes only while both calls run at once
    ran = []

    def meets(name: str):
        @tool(name)
        def waiting(order_id: str) -> str:
            """Look an order up, slowly."""
            both_running.wait()
            ran.append(name)
            return f"{name}: {order_id}"

        waiting.metadata = {"readOnlyHint": True}
        return waiting

    node = create_guarded_tool_node(
        [*shop.tools(), meets("first_lookup"), meets("second_lookup")], policy=POLICY, idempotency_store=store
    )
    graph = _graph(node, checkpointer=InMemorySaver())
    calls = tool_calls(("first_lookup", {"order_id": "A1"}), REFUND, ("second_lookup", {"order_id": "B2"}))

    def run(graph_input):
        return (
            graph.invoke(graph_input, thread("t1"))
            if entry == "invoke"
            else asyncio.run(graph.ainvoke(graph_input, thread("t1")))
        )

    paused = run(calls)
    assert len(paused["__interrupt__"]) == 1 and ran == [] and shop.runs == {}, "nothing ran before the approval"
    done = run(Command(resume=APPROVE))

    assert sorted(ran) == ["first_lookup", "second_lookup"]
    assert [m.content for m in done["messages"][1:]] == [
        "first_lookup: A1",
        "refunded 30.0 for A1",
        "second_lookup: B2",
    ]
    assert [(d.input["tool"], d.outcome) for d in done["decisions"]] == [
        ("first_lookup", "executed"),
        ("refund_order", "executed"),
        ("second_lookup", "executed"),
    ]


def test_calls_sent_one_per_task_are_planned_each_on_its_own_against_the_graphs_state(shop, store):
    node = create_guarded_tool_node(shop.tools(), policy=POLICY, idempotency_store=store, consent_key="write_consent")
    builder = StateGraph(ShopState).add_node("model", lambda state: {}).add_node("tools", node)
    builder.add_edge(START, "model")
    builder.add_conditional_edges(  # as create_agent dispatches tool calls: one Send, and one task, per call
        "model", lambda state: [Send("tools", [call]) for call in state["messages"][-1].tool_calls], ["tools"]
    )
    graph = builder.compile(checkpointer=InMemorySaver())

    consented = graph.invoke(tool_calls(LOOKUP, CHARGE, write_consent=CONSENT), thread("t1"))
    unasked = graph.invoke(tool_calls(LOOKUP, CHARGE), thread("t2"))

    assert sorted(m.content for m in consented["messages"][1:]) == ["charge 1: 20.0 from ana", "order A1: shipped"]
    assert sorted((d.output, d.outcome) for d in consented["decisions"]) == [
        ("retry_unsafe", "executed"),
        ("safe", "executed"),
    ]
    assert sorted(d.outcome for d in unasked["decisions"]) == ["executed", "not_requested"], "the state was read"
    assert shop.count("charges") == 1


@pytest.mark.parametrize("entry", ["invoke", "ainvoke"])
def test_the_guard_alone_is_a_plain_tool_nodes_hook(shop, store, decision_log, entry):
    tools = shop.tools()
    guard = ConsequenceGuard(tools, policy=POLICY, idempotency_store=store, decision_log=decision_log)
    node = ToolNode(tools, wrap_tool_call=guard.wrap_tool_call, awrap_tool_call=guard.awrap_tool_call)
    graph = _graph(node, checkpointer=InMemorySaver())

    def run(graph_input):
        if entry == "invoke":
            return graph.invoke(graph_input, thread("t1"))
        return asyncio.run(graph.ainvoke(graph_input, thread("t1")))

    charged, again = run(tool_calls(CHARGE)), run(tool_calls(CHARGE))
    (pending,) = run(tool_calls(REFUND))["__interrupt__"]
    refunded = run(Command(resume=APPROVE))

    assert charged["messages"][-1].content == again["messages"][-1].content == "charge 1: 20.0 from ana"
    assert [r["name"] for r in pending.value["action_requests"]] == ["refund_order"]
    assert refunded["messages"][-1].content == "refunded 30.0 for A1"
    assert [d.outcome for d in refunded["decisions"]] == ["executed", "replayed", "executed"], "in the state"
    assert [d.id for d in decision_log.decisions(node="guarded_tools")] == [d.id for d in refunded["decisions"]]
    assert dict(shop.runs) == {"charge_card": 1, "refund_order": 1}


def test_an_interrupt_inside_a_guarded_tool_frees_its_key_and_the_tool_runs_once_on_resume(store):
    sent = []

    @tool
    def send_voucher(customer: str) -> str:
        """Send a voucher, once a person has confirmed the customer."""
        confirmed = interrupt({"confirm": customer})
        sent.append(confirmed)
        return f"voucher sent to {customer} ({confirmed})"

    node = create_guarded_tool_node(
        [send_voucher], policy=ConsequencePolicy(tools={"send_voucher": "retry_unsafe"}), idempotency_store=store
    )
    graph = _graph(node, checkpointer=InMemorySaver())
    call = ("send_voucher", {"customer": "ana"})

    (pending,) = graph.invoke(tool_calls(call), thread("t1"))["__interrupt__"]
    assert pending.value == {"confirm": "ana"}
    assert store.get(derive_idempotency_key("t1", *call)) is None, "not recorded as a failure, not held"
    done = graph.invoke(Command(resume="confirmed by ops"), thread("t1"))

    assert done["messages"][-1].content == "voucher sent to ana (confirmed by ops)"
    assert sent == ["confirmed by ops"] and done["decisions"][-1].outcome == "executed"


def test_calls_that_share_an_id_are_refused_before_anything_runs(shop, store):
    message = AIMessage("", tool_calls=[{"name": n, "args": a, "id": "same"} for n, a in (CREDIT, CHARGE)])

    with pytest.raises(ToolCallIdError, match="share one"):
        shop_graph(shop, store).invoke({"messages": [message]}, thread("t1"))

    assert shop.runs == {}


# --- a tool call from an extracted object ------------------------------------------------------------------


class RefundTicket(BaseModel):
    """What an extractor reads from "please refund 12.50 of order A1" (the schema enforcer's output)."""

    order_id: str | None = None
    refund_amount: float | None = None
    invoice_id: str | None = None


def test_an_extracted_object_becomes_the_guarded_call_a_person_approves(shop, store):
    refund_order = {t.name: t for t in shop.tools()}["refund_order"]
    ticket = RefundTicket(order_id="A1", refund_amount=12.5)
    graph = shop_graph(shop, store, checkpointer=InMemorySaver())

    message = tool_call_from(ticket, refund_order, rename={"refund_amount": "amount"}, arguments={"reference": "r-7"})
    (pending,) = graph.invoke({"messages": [message]}, thread("t1"))["__interrupt__"]
    done = graph.invoke(Command(resume=APPROVE), thread("t1"))

    (call,) = message.tool_calls
    assert (call["name"], call["args"]) == ("refund_order", {"order_id": "A1", "amount": 12.5, "reference": "r-7"})
    assert call["id"].startswith("call_") and "invoice_id" not in call["args"], "a field the tool lacks is left out"
    assert pending.value["action_requests"][0]["arguments"] == call["args"]
    assert done["messages"][-1].content == "refunded 12.5 for A1" and shop.amounts("refunds", "r-7") == [12.5]


@pytest.mark.parametrize(
    ("value", "options", "error", "complaint"),
    [
        (RefundTicket(order_id="A1"), {"rename": {"amount": "amount"}}, ConfigError, "rename names ['amount']"),
        (RefundTicket(order_id="A1"), {}, ConfigError, "refund_order needs ['amount', 'reference']"),
        (
            {"order_id": "A1", "amount": 1.0, "reference": "r"},
            {"arguments": {"reference": "s"}},
            ConfigError,
            "both give ['reference']",
        ),
        (
            RefundTicket(order_id="A1", refund_amount=20_000.0),
            {"rename": {"refund_amount": "amount"}, "arguments": {"reference": "r"}},
            ToolArgumentsError,
            "less than or equal to 10000",
        ),
        (
            RefundTicket(refund_amount=5.0),
            {"rename": {"refund_amount": "amount"}, "arguments": {"reference": "r"}},
            ToolArgumentsError,
            "order_id",
        ),
    ],  # fmt: skip
    ids=["unknown-field", "missing-argument", "given-twice", "out-of-bounds", "none-for-required"],
)
def test_an_object_that_does_not_fit_the_tool_is_a_clear_error(shop, value, options, error, complaint):
    refund_order = {t.name: t for t in shop.tools()}["refund_order"]

    with pytest.raises(error) as raised:
        tool_call_from(value, refund_order, **options)

    assert complaint in str(raised.value)
