"""Multi-step requests: the router recognises them, the LLM plans once, each step runs through the example's nodes.

Real parts throughout (the embedded SmolLM2 judging each step, the trained router, the
store, the guarded tools with their approvals and idempotency keys); only the planner, the
frontier LLM, is a scripted chat model, attached as the graph's every LLM so that any
further call would show in ``llm.calls``.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage
from scripted_llm import scripted_llm

from agentgraph.errors import ConfigError
from agentgraph.graphs.customer_support import CustomerSupportParts, compose
from agentgraph.graphs.customer_support.planning import PlanStepError, parse_step
from agentgraph.graphs.customer_support.routes import support_router
from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER
from agentgraph.routing import Router, RuleStrategy, StepPolicy
from agentgraph.running import run_turn
from agentgraph.tiers import LLMTiers


@pytest.fixture(scope="module")
def router() -> Router:
    return support_router()


@pytest.mark.parametrize(
    ("message", "labels"),
    [
        ("cancel 48213 and tell me when 10001 arrives", ["cancel_order", "delivery_period"]),
        ("change the address on my last order, then send me its invoice", ["change_shipping_address", "get_invoice"]),
        ("where is order 48213 and what is your refund policy", ["track_order", "check_refund_policy"]),
    ],
)
def test_the_router_reads_each_request_of_a_multi_step_message(router, message, labels):
    verdict = router.decide(message)

    assert verdict.route == "plan" and verdict.label is None and verdict.outcome == "multi_step"
    assert [step.label for step in verdict.steps] == labels


@pytest.mark.parametrize(
    "message",
    [
        "I want to cancel order 48213",  # one request
        "I cancelled order 48213 yesterday and it still shipped",  # a statement, not two requests
        "track order 48213 and thanks",  # "thanks" is no clause
        "cancel order 48213 and order 10001",  # "order 10001" asks nothing on its own
    ],
)
def test_a_message_that_is_not_several_requests_is_routed_whole(router, message):
    assert router.decide(message).route != "plan"


def test_a_short_write_clause_is_consented_by_the_whole_message_and_a_question_about_one_is_not(router):
    [cancel, _] = router.decide("cancel 48213 and tell me when 10001 arrives").steps
    assert cancel.consent is not None and cancel.consent.request == "cancel 48213"

    [asked, _] = router.decide("can I still cancel order 48213? and when does 10001 arrive").steps
    assert asked.label == "cancel_order" and asked.consent is None and asked.write.judgement == "confirm"


def test_without_a_step_policy_the_router_never_plans():
    rules = RuleStrategy({r"\bcancel\b": "cancel_order", r"\barrive": "delivery_period"})
    message = "cancel order 48213 and tell me when 10001 arrives"

    assert Router([rules]).decide(message).label == "cancel_order"
    assert Router([rules], steps=StepPolicy()).decide(message).route == "plan"


def test_a_plan_step_names_a_capability_and_only_numbers_the_customer_wrote():
    message = "refund $20 for order 10001 and send me invoice #5521"

    step = parse_step("get_refund order_id=10001 refund_amount=20", message=message)
    assert (step.intent, step.route, step.ticket.order_id, step.ticket.refund_amount) == (
        "get_refund", "action", "10001", 20.0,
    )  # fmt: skip
    assert parse_step('get_invoice invoice_id="#5521"', message=message).ticket.invoice_id == "#5521"
    for invented in ("fly_to_the_moon", "cancel_order order_id=48213", "track_order colour=red"):
        with pytest.raises(PlanStepError):
            parse_step(invented, message=message)


@pytest.fixture
def support(embedded_slm, tmp_path):
    """Parts on a fresh store, and a graph whose every LLM is the scripted planner ``plans``."""

    def build(*plans: str):
        llm = scripted_llm(*(AIMessage(plan) for plan in plans))
        parts = CustomerSupportParts(data_dir=tmp_path / "support", slm=embedded_slm, llm=llm, extraction_llm=llm)
        return compose(parts), parts, llm

    return build


@pytest.mark.slow
def test_a_two_step_request_makes_one_planning_call_and_no_other_llm_call(support):
    graph, parts, llm = support("1. cancel_order order_id=48213\n2. delivery_period order_id=10001")

    turn = run_turn(graph, "cancel 48213 and tell me when 10001 arrives", thread_id="plan-1")

    assert turn.route == "plan" and len(llm.calls) == 1 and turn.llm_calls == 1
    assert turn.response.startswith("Order 48213 is cancelled.")
    assert "Order 10001 (" in turn.response and "should arrive by" in turn.response
    assert parts.shop.order_status(DEMO_CUSTOMER, "48213")["status"] == "cancelled"
    assert parts.shop.count_writes("cancel_order") == 1
    evaluations = [d.output for d in turn.decisions if d.node == "evaluate"]
    assert evaluations == ["continue", "done"]


@pytest.mark.slow
def test_a_write_the_customer_did_not_ask_for_is_refused_and_replanned_once(support):
    graph, parts, llm = support(
        "1. cancel_order order_id=48213\n2. delivery_period order_id=10001",  # a write nobody asked for
        "1. track_order order_id=48213\n2. delivery_period order_id=10001",
    )

    turn = run_turn(graph, "where is order 48213 and when does 10001 arrive", thread_id="plan-2")

    assert len(llm.calls) == 2, "one plan and one replan"
    assert parts.shop.count_writes() == 0
    assert "I have not changed anything" in turn.response
    assert "Order 48213 (" in turn.response and "Order 10001 (" in turn.response
    refused = next(d for d in turn.decisions if d.node == "guarded_tools")
    assert refused.outcome == "not_requested"


@pytest.mark.slow
def test_a_refund_in_a_plan_waits_for_approval_as_a_single_request_does_and_runs_once(support):
    graph, parts, llm = support("1. get_refund order_id=10001 refund_amount=20\n2. track_order order_id=48213")

    paused = run_turn(graph, "I need a refund of $20 for order 10001 and track order 48213", thread_id="plan-3")

    assert paused.response is None
    [action] = paused.interrupt["action_requests"]
    assert action["name"] == "issue_refund"
    assert action["arguments"] == {"customer_id": DEMO_CUSTOMER, "order_id": "10001", "amount": 20.0}
    assert parts.shop.count_writes("issue_refund") == 0, "nothing runs before a person approves"

    done = run_turn(graph, resume={"decisions": [{"type": "approve"}]}, thread_id="plan-3")

    assert done.response.startswith("A refund of 20.00 EUR for order 10001 is approved.")
    assert "Order 48213 (" in done.response
    assert parts.shop.count_writes("issue_refund") == 1 and len(llm.calls) == 1


@pytest.mark.slow
def test_with_no_llm_a_multi_step_request_ends_in_a_handoff_that_lists_its_steps(embedded_slm, tmp_path):
    parts = CustomerSupportParts(data_dir=tmp_path / "support", slm=embedded_slm, llm=None)

    turn = run_turn(compose(parts), "cancel 48213 and tell me when 10001 arrives", thread_id="plan-4")

    assert "(cancel 48213; tell me when 10001 arrives) to a colleague" in turn.response
    assert "Your ticket is HO-" in turn.response and parts.shop.count_writes() == 0
    planned = next(d for d in turn.decisions if d.node == "plan")
    assert planned.outcome == "handoff"


@pytest.mark.slow
def test_a_ten_step_plan_makes_at_most_two_llm_calls(support):
    orders = ["10001", "48213", "92965", "88321", "31175", "64105"]
    plan = [f"track_order order_id={order}" for order in orders] + [
        f"get_invoice order_id={order}" for order in orders[:4]
    ]
    graph, _, llm = support("\n".join(f"{n}. {step}" for n, step in enumerate(plan, 1)), "DONE: all answered")
    message = f"track orders {', '.join(orders)} and then send me the invoices of {', '.join(orders[:4])}"

    turn = run_turn(graph, message, thread_id="plan-5")

    assert turn.route == "plan" and len(llm.calls) <= 2
    assert all(f"Order {order} (" in turn.response for order in orders)
    assert turn.response.count("Invoice #") == 4


@pytest.mark.slow
def test_with_llm_tiers_the_plan_goes_to_the_frontier_tier_and_an_escalation_to_the_efficient_one(
    embedded_slm, tmp_path
):
    frontier = scripted_llm(AIMessage("1. cancel_order order_id=48213\n2. delivery_period order_id=10001"))
    efficient = scripted_llm(AIMessage("A colleague will call you today."))
    tiers = LLMTiers(models={"efficient": efficient, "frontier": frontier})
    parts = CustomerSupportParts(data_dir=tmp_path / "support", slm=embedded_slm, tiers=tiers)
    graph, recorder = compose(parts), [parts.llm_call_recorder]

    planned = run_turn(graph, "cancel 48213 and tell me when 10001 arrives", thread_id="tiers-1", callbacks=recorder)
    escalated = run_turn(graph, "I want to speak to a person", thread_id="tiers-2", callbacks=recorder)

    assert planned.route == "plan" and escalated.route == "escalate"
    assert (len(frontier.calls), len(efficient.calls)) == (1, 1)
    assert escalated.response == "A colleague will call you today."
    assert sorted(call.tier for call in parts.trace_store.calls()) == ["efficient", "frontier"]
    with pytest.raises(ConfigError, match="not both"):
        CustomerSupportParts(data_dir=tmp_path / "other", slm=embedded_slm, llm=frontier, tiers=tiers)


@pytest.mark.slow
def test_with_llm_tiers_a_replan_goes_to_the_reasoning_tier(embedded_slm, tmp_path):
    frontier = scripted_llm(AIMessage("1. cancel_order order_id=48213\n2. delivery_period order_id=10001"))
    reasoning = scripted_llm(AIMessage("1. track_order order_id=48213\n2. delivery_period order_id=10001"))
    tiers = LLMTiers(models={"frontier": frontier, "reasoning": reasoning})
    parts = CustomerSupportParts(data_dir=tmp_path / "support", slm=embedded_slm, tiers=tiers)

    turn = run_turn(compose(parts), "where is order 48213 and when does 10001 arrive", thread_id="tiers-3",
                    callbacks=[parts.llm_call_recorder])  # fmt: skip

    assert (len(frontier.calls), len(reasoning.calls)) == (1, 1) and parts.shop.count_writes() == 0
    assert "Order 48213 (" in turn.response
    assert [call.tier for call in parts.trace_store.calls()] == ["frontier", "reasoning"]
