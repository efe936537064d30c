"""The trace store and the LLM-call recorder, inside real LangGraph graphs on scripted chat models."""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from langchain_core.language_models import FakeListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph

from agentgraph.decisions import JSONLDecisionLog, SQLiteDecisionLog
from agentgraph.distill.traces import LLMCall, LLMCallRecorder, SQLiteTraceStore, TraceNotFoundError
from agentgraph.nodes.router import RouterState, RuleStrategy, create_router


class State(TypedDict, total=False):
    text: str
    route: str
    fields: dict[str, Any]
    plan: str


def _teacher() -> GenericFakeChatModel:
    """A chat model that answers three calls as a frontier LLM would: a label, a tool call, a plan."""
    return GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    "track_order",
                    usage_metadata={"input_tokens": 41, "output_tokens": 2, "total_tokens": 43},
                    response_metadata={"model_name": "teacher-large"},
                ),
                AIMessage("", tool_calls=[{"name": "SupportTicket", "args": {"order_id": "12345"}, "id": "call-1"}]),
                AIMessage("1. look up order 12345\n2. reply with its status"),
            ]
        )
    )


def _graph(llm: GenericFakeChatModel):
    def route(state: State) -> State:
        answer = llm.with_config(metadata={"agentgraph_step_type": "route"}).invoke(
            [("system", "Answer with one intent."), ("human", state["text"])]
        )
        return {"route": answer.content}

    def extract(state: State) -> State:
        answer = llm.with_config(tags=["step:extract"]).invoke([("human", state["text"])])
        return {"fields": answer.tool_calls[0]["args"]}

    def plan(state: State) -> State:
        return {"plan": llm.invoke(f"Plan the reply to: {state['text']}").content}

    builder = StateGraph(State)
    builder.add_node("router", route).add_node("extractor", extract).add_node("planner", plan)
    builder.add_edge(START, "router").add_edge("router", "extractor").add_edge("extractor", "planner")
    return builder.compile(checkpointer=InMemorySaver())


def test_recorder_stores_every_llm_call_of_a_graph_with_its_node_and_step_type(tmp_path):
    path = tmp_path / "traces.sqlite"
    store = SQLiteTraceStore(path)
    recorder = LLMCallRecorder(store, step_types={"planner": "plan"})
    result = _graph(_teacher()).invoke(
        {"text": "where is order 12345?"},
        config={"callbacks": [recorder], "configurable": {"thread_id": "thread-7"}},
    )
    assert result["route"] == "track_order" and result["fields"] == {"order_id": "12345"}
    store.close()

    calls = list(SQLiteTraceStore(path).calls())  # a new connection: the calls are on disk
    assert [(c.node, c.step_type) for c in calls] == [("router", "route"), ("extractor", "extract"), ("planner", "plan")]
    route, extract, plan = calls
    assert route.messages == [
        {"role": "system", "content": "Answer with one intent."},
        {"role": "user", "content": "where is order 12345?"},
    ]
    assert route.input_text == "where is order 12345?"
    assert (route.output, route.prompt_tokens, route.completion_tokens, route.model) == ("track_order", 41, 2, "teacher-large")
    assert extract.tool_calls == [{"name": "SupportTicket", "args": {"order_id": "12345"}}]
    assert plan.output.startswith("1. look up order 12345") and plan.prompt_tokens is None
    assert {c.thread_id for c in calls} == {"thread-7"}
    assert all(c.accepted is None and c.error is None and c.latency_ms > 0 for c in calls)
    assert len({c.id for c in calls}) == 3


def test_a_failed_call_is_stored_rejected_with_its_error():
    store = SQLiteTraceStore(":memory:")
    exhausted = GenericFakeChatModel(messages=iter([]))

    def ask(state: State) -> State:
        return {"route": exhausted.invoke(state["text"]).content}

    builder = StateGraph(State)
    builder.add_node("router", ask).add_edge(START, "router")
    with pytest.raises(RuntimeError):
        builder.compile().invoke({"text": "hello"}, config={"callbacks": [LLMCallRecorder(store, default_step_type="route")]})
    (call,) = store.calls()
    assert call.node == "router" and call.step_type == "route"
    assert call.accepted is False and call.output is None and "StopIteration" in call.error


def test_completion_models_are_recorded_as_one_user_message():
    store = SQLiteTraceStore(":memory:")
    FakeListLLM(responses=["cancel_order"]).invoke(
        "cancel order 7", config={"callbacks": [LLMCallRecorder(store)], "metadata": {"agentgraph_step_type": "route"}}
    )
    (call,) = store.calls()
    assert (call.messages, call.output, call.step_type) == ([{"role": "user", "content": "cancel order 7"}], "cancel_order", "route")


def test_calls_are_accepted_or_rejected_later_by_id(tmp_path):
    store = SQLiteTraceStore(tmp_path / "traces.sqlite")
    first, second, third = (
        store.record_call(LLMCall(messages=[{"role": "user", "content": f"request {n}"}], output="x", thread_id="t1"))
        for n in range(3)
    )
    assert store.mark(first.id, accepted=True).accepted is True
    assert store.mark(second.id, accepted=False).accepted is False
    assert [c.id for c in store.calls(pending=True)] == [third.id]
    assert {c.id: c.accepted for c in SQLiteTraceStore(tmp_path / "traces.sqlite").calls()} == {
        first.id: True, second.id: False, third.id: None,
    }  # fmt: skip
    # A verdict on the whole thread fills in only the calls nobody judged yet.
    assert store.mark_thread("t1", accepted=True) == 1
    assert {c.id: c.accepted for c in store.calls()} == {first.id: True, second.id: False, third.id: True}
    assert store.mark(second.id, accepted=None).accepted is None
    with pytest.raises(TraceNotFoundError, match="no LLM call 'nope'"):
        store.mark("nope", accepted=True)
    with pytest.raises(TraceNotFoundError):
        store.get("nope")


def test_the_store_holds_slm_decisions_beside_llm_calls(tmp_path):
    path = tmp_path / "traces.sqlite"
    store = SQLiteTraceStore(path)
    router = create_router(RuleStrategy({r"\border\b": "track_order"}), goto=False, decision_log=store)
    builder = StateGraph(RouterState)
    builder.add_node("router", router).add_edge(START, "router")
    builder.compile().invoke({"text": "where is my order?"}, config={"callbacks": [LLMCallRecorder(store)]})

    assert list(store.calls()) == []  # rules decided: no LLM call
    (decision,) = store.decisions(node="router")
    assert (decision.kind, decision.output["intent"], decision.strategy) == ("route", "track_order", "rules")
    # One file: the ordinary decision log reads the same records.
    assert [d.id for d in SQLiteDecisionLog(path).decisions()] == [decision.id]

    jsonl = JSONLDecisionLog(tmp_path / "decisions.jsonl")
    elsewhere = SQLiteTraceStore(tmp_path / "calls.sqlite", decision_log=jsonl)
    elsewhere.record(decision)
    assert [d.id for d in jsonl.decisions()] == [decision.id]
    assert [d.id for d in elsewhere.decisions(kind="route")] == [decision.id]
