"""The control nodes as LangChain v1 middleware, each in a real ``create_agent`` agent with a scripted LLM.

The LLM is the only fake (``scripted_llm``, which records every call); the router's rules, the validator,
the cross-encoder and the embedded SLM are the real ones.
"""

from __future__ import annotations

import asyncio

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from scripted_llm import answering_llm, scripted_llm

from agentgraph.idempotency import SQLiteIdempotencyStore
from agentgraph.middleware import (
    ConsequenceGuardMiddleware,
    ContextPrunerMiddleware,
    OutputValidatorMiddleware,
    SchemaEnforcerMiddleware,
    SLMRouterMiddleware,
)
from agentgraph.middleware.context_pruner import PRUNED_PLACEHOLDER
from agentgraph.middleware.output_validator import FLAGGED_REPLY
from agentgraph.nodes.consequence import ConsequencePolicy
from agentgraph.nodes.context_pruner import Reranker
from agentgraph.nodes.output_validator import pattern_check, pii_check
from agentgraph.nodes.router import RuleStrategy
from agentgraph.nodes.schema_enforcer import source_text_of
from agentgraph.records.decisions import SQLiteDecisionLog
from agentgraph.write_safety import WritePolicy

HOURS = "We are open 9:00-17:00, Monday to Friday."
RULES = {r"\bopening hours\b": "hours", r"\btrack\b": "track_order", r"\bcancel\b": "cancel_order"}


@tool(return_direct=True)
def track_order(order_id: str) -> str:
    """Where an order is."""
    return f"Order {order_id} is in transit."


def ask(agent, text: str, **config):
    return agent.invoke({"messages": [HumanMessage(text)]}, config or None)


def test_the_router_answers_a_confident_request_without_the_llm_and_escalates_an_unsure_one(tmp_path):
    llm, log = answering_llm("Sorry about that, I will look into it."), SQLiteDecisionLog(tmp_path / "decisions.db")
    router = SLMRouterMiddleware(RuleStrategy(RULES), answers={"hours": HOURS}, decision_log=log)
    agent = create_agent(llm, tools=[track_order], middleware=[router], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "customer-7"}}

    answered = ask(agent, "What are your opening hours?", **config)
    assert answered["messages"][-1].content == HOURS and llm.calls == []
    assert (answered["intent"], answered["route_confidence"], answered["escalation_reason"]) == ("hours", 1.0, None)

    escalated = ask(agent, "My parcel arrived damaged", **config)
    assert escalated["messages"][-1].content == "Sorry about that, I will look into it."
    assert len(llm.calls) == 1 and llm.calls[0][-1].content == "My parcel arrived damaged"
    assert (escalated["intent"], escalated["escalation_reason"]) == (None, "no_proposal")

    logged = [(d.node, d.outcome, d.escalated, d.thread_id) for d in log.decisions()]
    assert logged == [("router", "routed", False, "customer-7"), ("router", "no_proposal", True, "customer-7")]
    assert [d.outcome for d in escalated["decisions"]] == ["routed", "no_proposal"]  # both turns, on the thread


def test_the_router_decides_once_a_turn_and_an_answer_can_be_a_tool_call():
    llm = scripted_llm(AIMessage("", tool_calls=[{"name": "track_order", "args": {"order_id": "9"}, "id": "c1"}]))
    answers = {"track_order": lambda state: AIMessage("", tool_calls=[
        {"name": "track_order", "args": {"order_id": state["request"].split()[-1]}, "id": "r1"}])}  # fmt: skip
    agent = create_agent(
        llm, tools=[track_order], middleware=[SLMRouterMiddleware(RuleStrategy(RULES), answers=answers)]
    )

    result = ask(agent, "please track order 10001")
    assert result["messages"][-1].content == "Order 10001 is in transit." and llm.calls == []
    assert len(result["decisions"]) == 1

    # A route without an answer goes to the LLM, which calls the tool; after its result the router stays out.
    result = ask(agent, "where is it? (order 9)")
    assert result["messages"][-1].content == "Order 9 is in transit." and len(llm.calls) == 1
    assert len(result["decisions"]) == 1


def test_a_write_the_customer_did_not_consent_to_goes_to_the_llm_not_to_the_answer():
    llm = answering_llm("Do you want me to cancel order 48213?")
    cancellations = []
    router = SLMRouterMiddleware(
        RuleStrategy(RULES), answers={"cancel_order": lambda state: cancellations.append(state) or "Cancelled."},
        writes=WritePolicy(labels={"cancel_order"}),
    )  # fmt: skip
    result = ask(create_agent(llm, middleware=[router]), "cancel order 48213")
    assert result["messages"][-1].content == "Do you want me to cancel order 48213?" and len(llm.calls) == 1
    assert (result["escalation_reason"], result["write_consent"], cancellations) == ("unconfirmed_write", None, [])


def test_the_router_runs_natively_under_ainvoke():
    llm = answering_llm("I am the LLM.")
    agent = create_agent(llm, middleware=[SLMRouterMiddleware(RuleStrategy(RULES), answers={"hours": HOURS})])

    async def both():
        return await asyncio.gather(
            agent.ainvoke({"messages": [HumanMessage("opening hours on Sunday?")]}),
            agent.ainvoke({"messages": [HumanMessage("Do you sell gift cards?")]}),
        )

    answered, escalated = asyncio.run(both())
    assert answered["messages"][-1].content == HOURS and answered["intent"] == "hours"
    assert escalated["messages"][-1].content == "I am the LLM." and escalated["escalation_reason"] == "no_proposal"
    assert len(llm.calls) == 1


def test_the_validator_redacts_pii_in_the_final_answer_and_replaces_the_message(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    llm = scripted_llm(
        AIMessage("", tool_calls=[{"name": "track_order", "args": {"order_id": "jo@example.com"}, "id": "c1"}]),
        AIMessage("Your order is on its way; questions to jo@example.com."),
    )
    track = tool(track_order.func)  # not return_direct: the LLM answers after the tool
    agent = create_agent(llm, tools=[track], middleware=[OutputValidatorMiddleware([pii_check()], decision_log=log)])
    result = ask(agent, "where is my order?")
    assert [type(m).__name__ for m in result["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert result["messages"][-1].content == "Your order is on its way; questions to [EMAIL]."
    assert result["messages"][1].tool_calls[0]["args"] == {"order_id": "jo@example.com"}  # a tool call is not an answer
    assert result["validation"].outcome == "redacted"
    assert [(d.node, d.outcome) for d in log.decisions()] == [("output_validator", "redacted")]


def test_the_validator_withholds_an_answer_it_cannot_fix_and_checks_the_routers_answers_too():
    llm = answering_llm("Our internal runbook is at https://intra.example/ops.")
    router = SLMRouterMiddleware(RuleStrategy(RULES), answers={"hours": f"{HOURS} Mail hours@example.com."})
    validator = OutputValidatorMiddleware([pii_check(), pattern_check({"internal_url": r"https?://intra\."})])
    agent = create_agent(llm, middleware=[router, validator])

    flagged = ask(agent, "how do you handle returns?")
    assert flagged["messages"][-1].content == FLAGGED_REPLY
    assert flagged["validation"].flagged and "intra.example" in flagged["validation"].candidate

    answered = ask(agent, "opening hours?")
    assert answered["messages"][-1].content == f"{HOURS} Mail [EMAIL]." and len(llm.calls) == 1


def test_the_validator_runs_under_ainvoke():
    agent = create_agent(
        answering_llm("Call me at jo@example.com"), middleware=[OutputValidatorMiddleware([pii_check()])]
    )
    result = asyncio.run(agent.ainvoke({"messages": [HumanMessage("contact?")]}))
    assert result["messages"][-1].content == "Call me at [EMAIL]" and len(result["messages"]) == 2


REFUND = "To request a refund, open Orders, pick the order and choose Request refund."
NEWSLETTER = "Our newsletter comes out every Monday with the week's offers."


@pytest.fixture(scope="module")
def reranker():
    from agentgraph.graphs.customer_support import support_reranker_folder

    return Reranker(support_reranker_folder(), device="cpu")


@tool
def search_help(topic: str) -> str:
    """Search the help centre."""
    return {"refund": REFUND, "newsletter": NEWSLETTER}[topic]


@tool
def order_status(order_id: str) -> str:
    """Look an order up."""
    return f"Order {order_id}: the newsletter subscription on it is active."


@pytest.mark.slow
@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
def test_the_pruner_drops_irrelevant_context_before_the_model_sees_it(reranker, run, tmp_path):
    calls = [
        {"name": "search_help", "args": {"topic": t}, "id": f"s{i}"} for i, t in enumerate(["newsletter", "refund"])
    ]
    calls.append({"name": "order_status", "args": {"order_id": "10001"}, "id": "o1"})
    llm = scripted_llm(AIMessage("", tool_calls=calls), AIMessage("Open Orders and choose Request refund."))
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    pruner = ContextPrunerMiddleware(reranker, retrieval_tools={"search_help"}, top_k=1, decision_log=log)
    agent = create_agent(llm, tools=[search_help, order_status], middleware=[pruner])
    request = {"messages": [HumanMessage("How do I get my money back?")]}
    result = agent.invoke(request) if run == "invoke" else asyncio.run(agent.ainvoke(request))

    seen = {m.tool_call_id: m.content for m in llm.calls[1] if isinstance(m, ToolMessage)}
    assert seen == {
        "s0": PRUNED_PLACEHOLDER,
        "s1": REFUND,
        "o1": "Order 10001: the newsletter subscription on it is active.",
    }
    kept = {m.tool_call_id: m.content for m in result["messages"] if isinstance(m, ToolMessage)}
    assert kept["s0"] == NEWSLETTER  # the state keeps what the tool returned
    [decision] = log.decisions()
    assert (decision.node, decision.input, [c["index"] for c in decision.output["kept"]]) == (
        "context_pruner",
        {"query": "How do I get my money back?", "chunks": 2},
        [1],
    )
    assert result["decisions"] == [decision]


class OrderRequest(BaseModel):
    """An order the customer asks about."""

    order_id: str | None = Field(default=None, pattern=r"^\d{4,20}$", description="the order number, digits only")

    @field_validator("order_id")
    @classmethod
    def in_the_message(cls, value: str | None, info: ValidationInfo) -> str | None:
        source = source_text_of(info)
        if value is not None and source is not None and value not in source:
            raise ValueError(f"{value!r} does not occur in the message")
        return value


@tool
def order_from_state(runtime: ToolRuntime) -> str:
    """Look up the order the customer asked about."""
    return f"looked up {runtime.state['order'].order_id}"


def test_the_schema_enforcers_object_reaches_the_state_the_tools_and_the_model(embedded_slm, tmp_path):
    llm = scripted_llm(
        AIMessage("", tool_calls=[{"name": "order_from_state", "args": {}, "id": "c1"}]), AIMessage("It is on its way.")
    )
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    extract = SchemaEnforcerMiddleware(embedded_slm, OrderRequest, state_key="order", decision_log=log)
    agent = create_agent(llm, tools=[order_from_state], system_prompt="You help customers.", middleware=[extract])
    result = ask(agent, "Where is order 4587345? It is late.")

    assert result["order"] == OrderRequest(order_id="4587345") and result["handoff"] is None
    assert result["messages"][2].content == "looked up 4587345"
    system = llm.calls[0][0]
    assert isinstance(system, SystemMessage) and system.content.startswith("You help customers.")
    assert system.content.endswith('validated OrderRequest: {"order_id":"4587345"}')
    # Extracted once for the turn, not again after the tool result.
    assert [(d.node, d.outcome) for d in log.decisions()] == [("schema_enforcer", "ok")]
    assert len(llm.calls) == 2 and llm.calls[1][0] == system


REFUND_CALL = {"name": "refund_order", "args": {"order_id": "48213"}, "id": "c1"}


def refund_tools():
    refunds = []

    @tool
    def refund_order(order_id: str) -> str:
        """Refund an order in full."""
        refunds.append(order_id)
        return f"order {order_id} refunded"

    @tool
    def cancel_order(order_id: str) -> str:
        """Cancel an order."""
        refunds.append(f"cancelled {order_id}")
        return f"order {order_id} cancelled"

    return refunds, [refund_order, cancel_order]


@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
def test_the_guard_asks_a_person_before_an_irreversible_call_and_runs_it_once_across_resume_and_retry(run, tmp_path):
    def call(agent, value, config):
        return agent.invoke(value, config) if run == "invoke" else asyncio.run(agent.ainvoke(value, config))

    refunds, tools = refund_tools()
    llm = scripted_llm(
        AIMessage("", tool_calls=[REFUND_CALL]), AIMessage("Refunded."),
        AIMessage("", tool_calls=[REFUND_CALL]), AIMessage("It was refunded already."),
    )  # fmt: skip
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    guard = ConsequenceGuardMiddleware(
        tools, idempotency_store=SQLiteIdempotencyStore(tmp_path / "keys.db"), decision_log=log,
        policy=ConsequencePolicy(tools={"refund_order": "irreversible", "cancel_order": "retry_safe"}),
    )  # fmt: skip
    agent = create_agent(llm, middleware=[guard], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "customer-7"}}

    paused = call(agent, {"messages": [HumanMessage("Refund order 48213, please")]}, config)
    [request] = paused["__interrupt__"][0].value["action_requests"]
    assert (request["name"], request["arguments"], refunds) == ("refund_order", {"order_id": "48213"}, [])

    done = call(agent, Command(resume={"decisions": [{"type": "approve", "reviewer": "ops-anna"}]}), config)
    assert refunds == ["48213"] and done["messages"][-1].content == "Refunded."
    assert done["messages"][-2].content == "order 48213 refunded"

    # The same call again (a model that repeats itself, a redelivered message): the recorded outcome, no second
    # refund and no second approval.
    again = call(agent, {"messages": [HumanMessage("Did the refund go through?")]}, config)
    assert "__interrupt__" not in again and refunds == ["48213"]
    assert again["messages"][-2].response_metadata["replayed"] is True
    assert [d.outcome for d in again["decisions"]] == ["executed", "replayed"]
    assert [(d.node, d.outcome, d.thread_id) for d in log.decisions()] == [
        ("guarded_tools", "executed", "customer-7"),
        ("guarded_tools", "replayed", "customer-7"),
    ]


def test_a_write_the_router_did_not_get_consent_for_is_refused_by_the_guard(tmp_path):
    refunds, tools = refund_tools()
    cancel = {"name": "cancel_order", "args": {"order_id": "48213"}, "id": "c1"}
    llm = scripted_llm(AIMessage("", tool_calls=[cancel]), AIMessage("I have not cancelled anything."))
    router = SLMRouterMiddleware(RuleStrategy(RULES), writes=WritePolicy(labels={"cancel_order"}))
    guard = ConsequenceGuardMiddleware(
        tools, idempotency_store=SQLiteIdempotencyStore(tmp_path / "keys.db"), consent_key="write_consent",
        policy=ConsequencePolicy(tools={"refund_order": "irreversible", "cancel_order": "retry_safe"}),
    )  # fmt: skip
    agent = create_agent(llm, middleware=[router, guard], checkpointer=InMemorySaver())
    result = ask(agent, "Do NOT cancel order 48213", configurable={"thread_id": "t1"})
    assert result["escalation_reason"] == "unconfirmed_write" and refunds == []
    refused = result["messages"][2]
    assert isinstance(refused, ToolMessage) and refused.status == "error"
