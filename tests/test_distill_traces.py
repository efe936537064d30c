"""The trace store and the LLM-call recorder, inside real LangGraph graphs on scripted chat models.

Every store test runs on both backends: a SQLite file and a real PostgreSQL database (one SQL, two dialects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import FakeListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph

from agentgraph.nodes.router import RouterState, RuleStrategy, create_router
from agentgraph.records.decisions import JSONLDecisionLog, open_decision_log
from agentgraph.records.traces import (
    LLMCall,
    LLMCallRecorder,
    PostgresTraceStore,
    SQLiteTraceStore,
    TraceNotFoundError,
    open_trace_store,
)


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


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path) -> Callable[[str], str]:
    """``where(name)``: the location of a fresh store called ``name`` (the same name, the same store): a SQLite
    file, or a PostgreSQL database of its own."""
    databases: dict[str, str] = {}

    def location(name: str) -> str:
        if request.param == "sqlite":
            return str(tmp_path / f"{name}.sqlite")
        if name not in databases:
            databases[name] = request.getfixturevalue("postgres_server").new_database()
        return databases[name]

    return location


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


def test_recorder_stores_every_llm_call_of_a_graph_with_its_node_and_step_type(where):
    path = where("traces")
    store = open_trace_store(path)
    recorder = LLMCallRecorder(store, step_types={"planner": "plan"})
    result = _graph(_teacher()).invoke(
        {"text": "where is order 12345?"},
        config={"callbacks": [recorder], "configurable": {"thread_id": "thread-7"}},
    )
    assert result["route"] == "track_order" and result["fields"] == {"order_id": "12345"}
    store.close()

    calls = list(open_trace_store(path).calls())  # a new connection: the calls are stored
    assert [(c.node, c.step_type) for c in calls] == [
        ("router", "route"),
        ("extractor", "extract"),
        ("planner", "plan"),
    ]
    route, extract, plan = calls
    assert route.messages == [
        {"role": "system", "content": "Answer with one intent."},
        {"role": "user", "content": "where is order 12345?"},
    ]
    assert route.input_text == "where is order 12345?"
    assert (route.output, route.prompt_tokens, route.completion_tokens, route.model) == (
        "track_order",
        41,
        2,
        "teacher-large",
    )
    assert extract.tool_calls == [{"name": "SupportTicket", "args": {"order_id": "12345"}}]
    assert plan.output.startswith("1. look up order 12345") and plan.prompt_tokens is None
    assert {c.thread_id for c in calls} == {"thread-7"}
    assert all(c.accepted is None and c.error is None and c.latency_ms > 0 for c in calls)
    assert len({c.id for c in calls}) == 3


def test_a_failed_call_is_stored_rejected_with_its_error(where):
    store = open_trace_store(where("traces"))
    exhausted = GenericFakeChatModel(messages=iter([]))

    def ask(state: State) -> State:
        return {"route": exhausted.invoke(state["text"]).content}

    builder = StateGraph(State)
    builder.add_node("router", ask).add_edge(START, "router")
    with pytest.raises(RuntimeError):
        builder.compile().invoke(
            {"text": "hello"}, config={"callbacks": [LLMCallRecorder(store, default_step_type="route")]}
        )
    (call,) = store.calls()
    assert call.node == "router" and call.step_type == "route"
    assert call.accepted is False and call.output is None and "StopIteration" in call.error


def test_completion_models_are_recorded_as_one_user_message(where):
    store = open_trace_store(where("traces"))
    FakeListLLM(responses=["cancel_order"]).invoke(
        "cancel order 7", config={"callbacks": [LLMCallRecorder(store)], "metadata": {"agentgraph_step_type": "route"}}
    )
    (call,) = store.calls()
    assert (call.messages, call.output, call.step_type) == (
        [{"role": "user", "content": "cancel order 7"}],
        "cancel_order",
        "route",
    )


def test_calls_are_accepted_or_rejected_later_by_id(where):
    store = open_trace_store(where("traces"))
    first, second, third = (
        store.record_call(LLMCall(messages=[{"role": "user", "content": f"request {n}"}], output="x", thread_id="t1"))
        for n in range(3)
    )
    assert store.mark(first.id, accepted=True).accepted is True
    assert store.mark(second.id, accepted=False).accepted is False
    assert [c.id for c in store.calls(pending=True)] == [third.id]
    assert {c.id: c.accepted for c in open_trace_store(where("traces")).calls()} == {
        first.id: True, second.id: False, third.id: None,
    }  # fmt: skip
    # A verdict on the whole thread fills in only the calls nobody judged yet.
    assert store.mark_thread("t1", accepted=True) == 1
    assert {c.id: c.accepted for c in store.calls()} == {first.id: True, second.id: False, third.id: True}
    assert store.mark(second.id, accepted=None).accepted is None
    assert [c.id for c in store.calls(pending=False)] == [first.id, third.id]
    # A call stored again under its id is replaced (its outcome too), not added; one node's calls only.
    store.record_call(first.model_copy(update={"node": "router", "output": "y"}))
    assert [(c.id, c.output, c.accepted) for c in store.calls(node="router")] == [(first.id, "y", None)]
    assert store.mark_thread("t1", accepted=False, node="router") == 1
    assert {c.id: c.accepted for c in store.calls()} == {first.id: False, second.id: None, third.id: True}
    with pytest.raises(TraceNotFoundError, match="no LLM call 'nope'"):
        store.mark("nope", accepted=True)
    with pytest.raises(TraceNotFoundError):
        store.get("nope")


def test_the_store_holds_slm_decisions_beside_llm_calls(where, tmp_path):
    path = where("traces")
    store = open_trace_store(path)
    router = create_router(RuleStrategy({r"\border\b": "track_order"}), goto=False, decision_log=store)
    builder = StateGraph(RouterState)
    builder.add_node("router", router).add_edge(START, "router")
    builder.compile().invoke({"text": "where is my order?"}, config={"callbacks": [LLMCallRecorder(store)]})

    assert list(store.calls()) == []  # rules decided: no LLM call
    (decision,) = store.decisions(node="router")
    assert (decision.kind, decision.output["intent"], decision.strategy) == ("route", "track_order", "rules")
    # One database: the ordinary decision log reads the same records.
    assert [d.id for d in open_decision_log(path).decisions()] == [decision.id]
    assert list(open_decision_log(path).decisions(node="router", kind="extract")) == []

    jsonl = JSONLDecisionLog(tmp_path / "decisions.jsonl")
    elsewhere = open_trace_store(where("calls"), decision_log=jsonl)
    elsewhere.record(decision)
    assert [d.id for d in jsonl.decisions()] == [decision.id]
    assert [d.id for d in elsewhere.decisions(kind="route")] == [decision.id]


def test_one_opener_takes_a_file_or_a_postgres_url(where):
    location = where("traces")
    store = open_trace_store(location)
    expected = PostgresTraceStore if location.startswith("postgresql://") else SQLiteTraceStore
    assert type(store) is expected and type(store.decision_log).__name__ == expected.__name__.replace(
        "TraceStore", "DecisionLog"
    )
    with pytest.raises(TraceNotFoundError, match=f"in the trace store {store.path};"):
        store.get("nope")
