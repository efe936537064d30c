"""The example customer-support graph end to end: routes, the store, approvals, restarts, escalation and the CLI.

Real parts throughout: the embedded SmolLM2, the trained router and reranker,
SQLite for the store, the checkpoints and the idempotency keys. Only the
escalation LLM is a scripted fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scripted_llm import answering_llm

from agentgraph.checkpointing import sqlite_checkpointer
from agentgraph.graphs.customer_support import (
    CUSTOMER_SUPPORT_INTENTS,
    POLICY_SECTION_OF_INTENT,
    READ_TOOLS,
    ROUTES,
    STATE_SCHEMAS,
    TOOL_OF_INTENT,
    CustomerSupportParts,
    compose,
    load_policy_sections,
    policy_relevance_pairs,
)
from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER, Shop, ShopError
from agentgraph.running import run_turn
from agentgraph.slm.server import free_port


def test_every_intent_of_the_data_has_a_route_and_every_lookup_or_action_a_tool():
    assert set(ROUTES) == set(CUSTOMER_SUPPORT_INTENTS)
    assert set(ROUTES.values()) == {"lookup", "action", "knowledge", "escalate"}
    assert {i for i, r in ROUTES.items() if r in ("lookup", "action")} == set(TOOL_OF_INTENT)
    assert all(TOOL_OF_INTENT[i] in READ_TOOLS for i, r in ROUTES.items() if r == "lookup")
    assert not any(TOOL_OF_INTENT[i] in READ_TOOLS for i, r in ROUTES.items() if r == "action")


def test_the_policy_documents_hold_a_section_for_every_knowledge_intent():
    sections = load_policy_sections()

    assert set(POLICY_SECTION_OF_INTENT) == {intent for intent, route in ROUTES.items() if route == "knowledge"}
    assert set(POLICY_SECTION_OF_INTENT.values()) <= {section.title for section in sections}
    assert all(section.text and "##" not in section.text for section in sections)


def test_the_reranker_learns_the_policy_sections_with_a_same_document_section_as_the_hardest_negative(support_splits):
    sections = {section.text: section for section in load_policy_sections()}
    pairs = policy_relevance_pairs(support_splits["train"], list(sections.values()), per_intent=5)

    assert len(pairs) == len(POLICY_SECTION_OF_INTENT) * 5 * 4
    intent_of = {row.text: row.intent for row in support_splits["train"]}
    for start in range(0, len(pairs), 4):
        relevant, *irrelevant = pairs[start : start + 4]
        answer = sections[relevant.passage]
        assert relevant.label == 1.0 and answer.title == POLICY_SECTION_OF_INTENT[intent_of[relevant.query]]
        assert [pair.label for pair in irrelevant] == [0.0] * 3 and {pair.query for pair in irrelevant} == {
            relevant.query
        }
        assert sections[irrelevant[0].passage].document == answer.document != sections[irrelevant[1].passage].document
        assert answer.text not in {pair.passage for pair in irrelevant}
    assert policy_relevance_pairs(support_splits["train"], list(sections.values()), per_intent=5) == pairs  # fixed seed


def test_the_store_is_seeded_with_the_readme_orders_and_writes_once_per_key(tmp_path):
    shop = Shop(tmp_path / "shop.db")
    tools = {tool.name: tool for tool in shop.tools()}

    assert shop.order_status(DEMO_CUSTOMER, "10001")["status"] == "shipped"
    assert shop.order_status(DEMO_CUSTOMER, "48213")["status"] == "processing"
    first = tools["cancel_order"].invoke({"customer_id": DEMO_CUSTOMER, "order_id": "48213", "idempotency_key": "k"})
    again = tools["cancel_order"].invoke({"customer_id": DEMO_CUSTOMER, "order_id": "48213", "idempotency_key": "k"})
    assert (first["changed"], again["changed"]) == (True, False)
    assert shop.count_writes("cancel_order") == 1
    assert Shop(tmp_path / "shop.db").order_status(DEMO_CUSTOMER, "48213")["status"] == "cancelled", "seeded once"


def test_the_store_refuses_other_customers_orders_and_impossible_changes(tmp_path):
    shop = Shop(tmp_path / "shop.db")

    with pytest.raises(ShopError, match="no order 10001 on your account"):
        shop.order_status("C1002", "10001")
    with pytest.raises(ShopError, match="already shipped"):
        shop.cancel_order(DEMO_CUSTOMER, "10001", "k1")
    with pytest.raises(ShopError, match="left to refund"):
        shop.issue_refund(DEMO_CUSTOMER, "10001", 1_000_000)
    assert shop.count_writes() == 0


@pytest.fixture(scope="module")
def llm():
    """The escalation LLM, attached so that a call on a routine path would show in ``llm.calls``."""
    return answering_llm("I am the LLM, answering an escalation.")


@pytest.fixture(scope="module")
def parts(embedded_slm, llm, tmp_path_factory):
    return CustomerSupportParts(data_dir=tmp_path_factory.mktemp("support"), slm=embedded_slm, llm=llm)


@pytest.fixture(autouse=True)
def routine_paths_never_call_the_llm(request):
    """Every test on the shared graph is a routine request: none may reach the LLM."""
    yield
    if "parts" in request.fixturenames:
        assert request.getfixturevalue("llm").calls == [], "a routine request called the LLM"


@pytest.fixture(scope="module")
def graph(parts):
    return compose(parts)


@pytest.mark.slow
def test_a_lookup_reads_the_store_and_answers_from_a_template_without_the_llm(graph, parts):
    turn = run_turn(graph, "track order 10001", thread_id="lookup-1")

    assert (turn.route, turn.intent, turn.llm_calls) == ("lookup", "track_order", 0)
    assert turn.nodes == ["router", "extract", "plan_tool_call", "read_tools", "answer", "validate", "deliver"]
    order = parts.shop.order_status(DEMO_CUSTOMER, "10001")
    assert turn.response == (f"Order 10001 ({order['items']}) has shipped with {order['carrier']} and should arrive "
                             f"by {order['estimated_delivery']}.")  # fmt: skip
    logged = [d.node for d in parts.decision_log.decisions() if d.thread_id == "lookup-1"]
    assert logged == ["router", "schema_enforcer", "output_validator"]


@pytest.mark.slow
def test_a_cancellation_runs_once_under_its_key_even_when_the_request_is_repeated(graph, parts):
    first = run_turn(graph, "I want to cancel order 48213", thread_id="cancel-1")
    again = run_turn(graph, "I want to cancel order 48213", thread_id="cancel-1")

    assert (first.route, first.intent) == ("action", "cancel_order")
    assert "guarded_tools" in first.nodes and first.interrupt is None
    assert first.response.startswith("Order 48213 is cancelled")
    assert again.response == first.response, "the second request is answered from the recorded outcome"
    assert parts.shop.count_writes("cancel_order") == 1
    decisions = [d for d in again.decisions if d.kind == "classify_tool"]
    assert decisions[0].outcome == "replayed" and decisions[0].output == "retry_safe"


@pytest.mark.slow
def test_an_action_without_an_order_number_asks_which_order_instead_of_guessing(graph, parts):
    writes = parts.shop.count_writes()
    turn = run_turn(graph, "I need to cancel my order", thread_id="cancel-2")

    assert turn.intent == "cancel_order" and "guarded_tools" not in turn.nodes
    assert turn.response.startswith("Which order should I cancel? Your recent orders:")
    assert "10001" in turn.response and parts.shop.count_writes() == writes


@pytest.mark.slow
def test_a_refund_waits_for_approval_survives_a_restart_and_runs_as_edited(parts, tmp_path):
    checkpoints = tmp_path / "checkpoints.db"
    before = parts.shop.count_writes("issue_refund")
    paused = run_turn(compose(parts, checkpointer=sqlite_checkpointer(checkpoints, *STATE_SCHEMAS)),
                      "I need a refund of $20 for order 10001", thread_id="refund-1")  # fmt: skip

    assert paused.response is None and paused.intent == "get_refund"
    [action] = paused.interrupt["action_requests"]
    assert action["name"] == "issue_refund"
    assert action["arguments"] == {"customer_id": DEMO_CUSTOMER, "order_id": "10001", "amount": 20.0}
    assert parts.shop.count_writes("issue_refund") == before, "nothing runs before a person approves"

    restarted = compose(parts, checkpointer=sqlite_checkpointer(checkpoints, *STATE_SCHEMAS))
    edited = {
        "type": "edit",
        "edited_action": {"name": "issue_refund", "arguments": {**action["arguments"], "amount": 15}},
    }
    done = run_turn(restarted, resume={"decisions": [edited]}, thread_id="refund-1")

    assert done.response.startswith("A refund of 15.00 EUR for order 10001 is approved")
    assert parts.shop.refund_status(DEMO_CUSTOMER, "10001")["amount"] == 15.0
    assert parts.shop.count_writes("issue_refund") == before + 1


@pytest.mark.slow
def test_a_rejected_account_deletion_never_runs(graph, parts):
    paused = run_turn(graph, "delete my account", thread_id="delete-1")
    assert paused.interrupt["action_requests"][0]["name"] == "delete_account"

    done = run_turn(graph, resume={"decisions": [{"type": "reject", "message": "customer has open orders"}]},
                    thread_id="delete-1")  # fmt: skip

    assert done.response == "Our team reviewed this request and did not approve it, so nothing was changed."
    assert parts.shop.count_writes("delete_account") == 0


@pytest.mark.slow
def test_a_knowledge_question_is_answered_from_the_policy_section_the_pruner_keeps(graph):
    turn = run_turn(graph, "which payment methods can I use?", thread_id="knowledge-1")

    assert (turn.route, turn.intent, turn.llm_calls) == ("knowledge", "check_payment_methods", 0)
    assert turn.nodes == ["router", "retrieve", "prune", "answer", "validate", "deliver"]
    [prune] = [d for d in turn.decisions if d.kind == "prune"]
    assert len(prune.output["kept"]) == 1 and len(prune.output["dropped"]) == 5
    assert turn.response.startswith("We accept Visa, Mastercard")


@pytest.mark.slow
@pytest.mark.parametrize("message", ["I want to talk to a human agent", "What's the weather in Lisbon tomorrow?"])
def test_without_an_llm_escalations_end_in_a_handoff_ticket(embedded_slm, tmp_path, message):
    graph = compose(CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm))
    turn = run_turn(graph, message, thread_id="escalate")

    assert turn.route == "escalate" and turn.llm_calls == 0
    assert turn.nodes == ["router", "escalate", "answer", "validate", "deliver"]
    assert "Your ticket is HO-" in turn.response


@pytest.mark.slow
def test_the_llm_answers_escalations_and_its_reply_is_validated_before_it_leaves(parts):
    escalation_llm = answering_llm("I'm sorry. Write to me at dana.lee@example.com and I will fix it.")
    with_llm = CustomerSupportParts(
        data_dir=parts.data_dir, slm=parts.slm, llm=escalation_llm
    )  # no extraction fallback

    turn = run_turn(compose(with_llm), "I want to file a complaint, your service is terrible", thread_id="complaint-1",
                    callbacks=[with_llm.llm_call_recorder])  # fmt: skip

    assert (turn.route, turn.intent, turn.llm_calls, len(escalation_llm.calls)) == ("escalate", "complaint", 1, 1)
    assert turn.response == "I'm sorry. Write to me at [EMAIL] and I will fix it."
    [validation] = [d for d in turn.decisions if d.kind == "validate"]
    assert validation.outcome == "redacted"
    # The call is in the trace store for distillation, waiting for an outcome before it is training data.
    [call] = with_llm.trace_store.calls(thread_id="complaint-1")
    assert (call.node, call.step_type, call.accepted) == ("escalate", "escalate", None)
    assert call.output.startswith("I'm sorry.") and "terrible" in call.messages[-1]["content"]


@pytest.mark.slow
def test_the_cli_runs_one_request_and_prints_one_json_object(tmp_path):
    command = [sys.executable, "-m", "agentgraph.cli", "run", "customer-support", "track order 48213",
               "--json", "--data-dir", str(tmp_path)]  # fmt: skip
    # A real ChatOpenAI client is configured, pointed at a port nothing listens on: a call would be
    # counted in llm_calls (and fail), so 0 calls means the routine path did not try one.
    unreachable_llm = {
        "AGENTGRAPH_LLM_MODEL": "frontier",
        "AGENTGRAPH_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=os.environ | unreachable_llm)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {
        "route",
        "confidence",
        "nodes",
        "llm_calls",
        "slm_calls",
        "response",
        "interrupt",
        "thread_id",
        "latency_ms",
    } <= set(result)
    assert (result["route"], result["llm_calls"], result["interrupt"]) == ("lookup", 0, None)
    assert result["slm_calls"] == 2, "the classifier routed and the SLM extracted"
    assert result["response"].startswith("Order 48213")


REFUND_REQUEST = "I need a refund of $20 for order 10001"
EDITED_REFUND = {"customer_id": DEMO_CUSTOMER, "order_id": "10001", "amount": 15}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "tool", "decision", "outcome", "reply", "writes"),
    [
        ("delete my account", "delete_account", {"type": "approve"}, "executed", "Your account is deleted", 1),
        (REFUND_REQUEST, "issue_refund", {"type": "reject", "message": "paid in cash"}, "rejected",
         "Our team reviewed this request and did not approve it, so nothing was changed.", 0),
        (REFUND_REQUEST, "issue_refund",
         {"type": "edit", "edited_action": {"name": "issue_refund", "arguments": EDITED_REFUND}},
         "executed", "A refund of 15.00 EUR for order 10001 is approved", 1),
    ],
    ids=["approve", "reject", "edit"],
)  # fmt: skip
def test_the_cli_answers_a_pending_approval_in_a_later_process(
    tmp_path, message, tool, decision, outcome, reply, writes
):
    from agentgraph.records.decisions import SQLiteDecisionLog

    cli = [sys.executable, "-m", "agentgraph.cli", "run", "customer-support"]
    options = ["--data-dir", str(tmp_path), "--json", "--thread", "t-cli"]
    env = os.environ | {"AGENTGRAPH_LLM_MODEL": ""}
    paused = subprocess.run([*cli, message, *options], capture_output=True, text=True, timeout=900, env=env)
    assert paused.returncode == 0, paused.stderr
    [action] = json.loads(paused.stdout)["interrupt"]["action_requests"]
    assert action["name"] == tool and Shop(tmp_path / "shop.db").count_writes() == 0, (
        "nothing runs before a person decides"
    )

    resumed = subprocess.run([*cli, *options, "--resume", json.dumps({"decisions": [decision]})],
                             capture_output=True, text=True, timeout=900, env=env)  # fmt: skip

    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["response"].startswith(reply)
    shop = Shop(tmp_path / "shop.db")
    assert (shop.count_writes(tool), shop.count_writes()) == (writes, writes)
    if decision["type"] == "edit":
        assert shop.refund_status(DEMO_CUSTOMER, "10001")["amount"] == 15.0, "the edited figure, not the asked one"
    [logged] = SQLiteDecisionLog(tmp_path / "decisions.db").decisions(kind="classify_tool")
    assert (logged.input["tool"], logged.outcome, logged.metadata["approval"]) == (tool, outcome, decision["type"])


@pytest.mark.slow
def test_an_approval_asked_in_the_terminal_refuses_an_edit_of_the_target_asks_again_and_records_the_reviewer(tmp_path):
    from agentgraph.records.decisions import SQLiteDecisionLog

    command = [sys.executable, "-m", "agentgraph.cli", "run", "customer-support", "please delete my account",
               "--data-dir", str(tmp_path), "--reviewer", "ops-anna"]  # fmt: skip
    answers = 'e\n{"customer_id": "C1002"}\nr\nthe customer has open orders\n'
    done = subprocess.run(command, input=answers, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"AGENTGRAPH_LLM_MODEL": ""})  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "customer_id" in done.stderr and "agentgraph: the resume value was refused" in done.stderr
    assert "please delete my account" in done.stderr, "the person deciding sees the customer's words"
    assert "did not approve it, so nothing was changed" in done.stdout
    assert Shop(tmp_path / "shop.db").count_writes() == 0
    [decision] = [d for d in SQLiteDecisionLog(tmp_path / "decisions.db").decisions(kind="classify_tool")]
    assert (decision.outcome, decision.metadata["reviewer"]) == ("rejected", "ops-anna")


def test_the_cli_rejects_a_resume_without_a_thread_with_a_clear_error():
    done = subprocess.run([sys.executable, "-m", "agentgraph.cli", "run", "customer-support", "--resume", "{}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip

    assert done.returncode == 2
    assert "--resume answers the approval pending on a thread: give its --thread ID" in done.stderr
