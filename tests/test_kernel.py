"""The control-node kernel, tested once for every node: the input rule, async runs, modes and destinations.

Nodes that need no model run as they are; the schema enforcer and the loop evaluator are built on
an SLM that fails the test when asked anything (the kernel refuses bad input before the decision
runs), and run on the real embedded SLM where they must decide. The context pruner runs on the
session's fine-tuned cross-encoder, or on a reranker that fails when asked, for the same reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel
from scripted_llm import answering_llm

from agentgraph.errors import EmptyInputError, InputTooLargeError
from agentgraph.llm import HumanHandoff
from agentgraph.modes import MODES_ENV
from agentgraph.nodes.context_pruner import ContextPrunerState, Reranker, create_context_pruner
from agentgraph.nodes.kernel import MAX_INPUT_CHARS, ControlNode
from agentgraph.nodes.loop import LoopState, Observation, create_actor, create_evaluator, create_planner
from agentgraph.nodes.output_validator import ValidationReport, create_output_validator, length_check, pii_check
from agentgraph.nodes.router import RouterState, RuleStrategy, create_escalation_node, create_router
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.records.decisions import DecisionLog, DecisionState, SQLiteDecisionLog
from agentgraph.slm.base import SLM


class UncalledSLM(SLM):
    """An SLM that fails the test when it is asked anything: the nodes built on it must not reach it."""

    model_name = "uncalled"
    max_context_tokens = 2048

    def tokenize_chat(self, messages, *, add_generation_prompt):
        raise AssertionError("the SLM was asked to tokenize")

    def _score_continuations(self, prefix, continuations):
        raise AssertionError("the SLM was asked to choose")

    def _generate_json(self, messages, prompt_ids, json_schema, max_tokens):
        raise AssertionError("the SLM was asked for JSON")

    def _generate_text(self, messages, prompt_ids, max_tokens, stop):
        raise AssertionError("the SLM was asked for text")


class UncalledReranker:
    """A reranker that fails the test when it is asked to score or count."""

    model_name = "uncalled"

    def score(self, query, passages):
        raise AssertionError("the reranker was asked to score")

    def count_tokens(self, text):
        raise AssertionError("the reranker was asked to count tokens")


class Order(BaseModel):
    order_id: str | None = None


class ExtractState(DecisionState, total=False):
    text: str
    extracted: Order | None
    handoff: HumanHandoff | None


class ValidatorState(DecisionState, total=False):
    draft: Any
    output: Any
    validation: ValidationReport


ROUTES = {"track_order": "lookup"}


def rule_router(**kwargs: Any) -> ControlNode:
    return create_router(
        RuleStrategy({r"\border\b": "track_order"}), routes=ROUTES, default_route="knowledge", **kwargs
    )


def running_total(step: str, state: Mapping[str, Any]) -> str:
    return f"running total {int(step.split()[-1])}"


EVALUATED = {
    "goal": "Add 2 and 3",
    "plan": ["add 2", "add 3"],
    "step_index": 1,
    "observations": [Observation(step="add 2", result="running total 2")],
}
"""A loop state just after its first step, for the evaluator."""


@dataclass(frozen=True)
class NodeCase:
    """A node's factory (from the test's fixture request and a decision log), its state schema, input key and state."""

    build: Callable[[pytest.FixtureRequest, DecisionLog | None], ControlNode]
    state_schema: type
    input_key: str | None
    state: dict[str, Any] = field(default_factory=dict)


def embedded(request: pytest.FixtureRequest) -> SLM:
    return request.getfixturevalue("embedded_slm")


def tiny_reranker(request: pytest.FixtureRequest) -> Reranker:
    return Reranker(request.getfixturevalue("trained_reranker_folder"), device="cpu")


CHUNKS = ["To request a refund, open Orders and choose Request refund.", "Our newsletter comes out every Monday."]

REFUSING = {
    "router": NodeCase(lambda request, log: rule_router(decision_log=log), RouterState, "text"),
    "schema_enforcer": NodeCase(
        lambda request, log: create_schema_enforcer(UncalledSLM(), Order, decision_log=log), ExtractState, "text"
    ),
    "context_pruner": NodeCase(
        lambda request, log: create_context_pruner(UncalledReranker(), decision_log=log),
        ContextPrunerState,
        "query",
        {"chunks": CHUNKS},
    ),  # fmt: skip
    "output_validator": NodeCase(
        lambda request, log: create_output_validator([pii_check()], decision_log=log), ValidatorState, "draft"
    ),
    "escalate": NodeCase(lambda request, log: create_escalation_node(None, decision_log=log), RouterState, "text"),
    "plan": NodeCase(
        lambda request, log: create_planner(answering_llm("1. add 2"), decision_log=log), LoopState, "goal"
    ),
    "evaluate": NodeCase(
        lambda request, log: create_evaluator(UncalledSLM(), decision_log=log),
        LoopState,
        "goal",
        {key: value for key, value in EVALUATED.items() if key != "goal"},
    ),  # fmt: skip
}
"""Every control node with a text input, built on parts that fail when the refused input reaches them."""

EMPTY = {"empty": "", "blank": "   \n\t", "control_characters": "\x00\x1b\u200b", "no_messages": []}


@pytest.mark.parametrize("empty", EMPTY.values(), ids=EMPTY.keys())
@pytest.mark.parametrize("name", REFUSING)
def test_every_node_refuses_empty_input_and_logs_one_rejected_record(request, name, empty):
    case = REFUSING[name]
    log = SQLiteDecisionLog(":memory:")
    node = case.build(request, log)
    assert node.name == name
    with pytest.raises(EmptyInputError, match=rf"\(state\[{case.input_key!r}\]\) is empty"):
        node({**case.state, case.input_key: empty}, {"configurable": {"thread_id": "t-empty"}})
    [record] = log.decisions()
    assert (record.node, record.outcome, record.thread_id) == (name, "rejected", "t-empty")
    assert "is empty" in record.metadata["error"]


@pytest.mark.parametrize("name", REFUSING)
def test_every_node_refuses_input_over_max_input_chars_and_logs_it(request, name):
    case = REFUSING[name]
    log = SQLiteDecisionLog(":memory:")
    node = case.build(request, log)
    with pytest.raises(InputTooLargeError, match=f"holds {MAX_INPUT_CHARS + 1:,} characters"):
        node({**case.state, case.input_key: "a" * (MAX_INPUT_CHARS + 1)}, {})
    [record] = log.decisions()
    assert (record.node, record.outcome) == (name, "rejected")
    assert "max_input_chars" in record.metadata["error"]


def test_a_message_list_is_read_as_its_last_message():
    log = SQLiteDecisionLog(":memory:")
    update = rule_router(decision_log=log)(
        {"text": [AIMessage("How can I help?"), HumanMessage("where is order 10001?")]}
    )
    assert (update.goto, update.update["request"]) == ("lookup", "where is order 10001?")


def test_a_structured_value_is_validated_as_it_is():
    validate = create_output_validator([pii_check()])
    update = validate({"draft": [{"note": "write to jo@example.com"}, {"note": ""}]})
    assert update["output"] == [{"note": "write to [EMAIL]"}, {"note": ""}]


slow = pytest.mark.slow

DECIDING = {
    "router": NodeCase(
        lambda request, log: rule_router(decision_log=log), RouterState, "text", {"text": "where is order 10001?"}
    ),
    "output_validator": NodeCase(
        lambda request, log: create_output_validator([pii_check(), length_check(max_chars=40)], decision_log=log),
        ValidatorState,
        "draft",
        {"draft": "Write to jo@example.com today."},
    ),  # fmt: skip
    "escalate": NodeCase(
        lambda request, log: create_escalation_node(answering_llm("Sorry about that."), decision_log=log),
        RouterState,
        "text",
        {"text": "nothing works", "escalation_reason": "below_gate"},
    ),  # fmt: skip
    "plan": NodeCase(
        lambda request, log: create_planner(answering_llm("1. add 2\n2. add 3"), decision_log=log),
        LoopState,
        "goal",
        {"goal": "Add 2 and 3"},
    ),  # fmt: skip
    "act": NodeCase(
        lambda request, log: create_actor(running_total, decision_log=log),
        LoopState,
        None,
        {"goal": "Add 2 and 3", "plan": ["add 2", "add 3"], "step_index": 0},
    ),  # fmt: skip
    "context_pruner": pytest.param(
        NodeCase(
            lambda request, log: create_context_pruner(tiny_reranker(request), decision_log=log),
            ContextPrunerState,
            "query",
            {"query": "I want my money back", "chunks": CHUNKS},
        ),  # fmt: skip
        marks=slow,
    ),
    "schema_enforcer": pytest.param(
        NodeCase(
            lambda request, log: create_schema_enforcer(embedded(request), Order, decision_log=log),
            ExtractState,
            "text",
            {"text": "where is order 4587345?"},
        ),  # fmt: skip
        marks=slow,
    ),
    "evaluate": pytest.param(
        NodeCase(
            lambda request, log: create_evaluator(embedded(request), decision_log=log), LoopState, "goal", EVALUATED
        ),
        marks=slow,
    ),
}
"""Every control node with an input it decides on; the ones on a real model are slow."""

VOLATILE = frozenset({"id", "timestamp", "latency_ms", "ticket_id", "created_at"})
"""What differs between two runs of the same decision: identities, clocks."""


def comparable(value: Any) -> Any:
    """``value`` as plain data, without the fields that differ from run to run."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {key: comparable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [comparable(item) for item in value]
    return value


def single_node_graph(node: ControlNode, state_schema: type):
    builder = StateGraph(state_schema)
    builder.add_node(node).add_edge(START, node.name)
    for destination in node.destinations:
        builder.add_node(destination, lambda state: {}).add_edge(destination, END)
    return builder.compile()


@pytest.mark.parametrize("case", DECIDING.values(), ids=DECIDING.keys())
def test_every_node_gives_the_same_update_through_ainvoke_as_through_invoke(request, case):
    sync_log, async_log = SQLiteDecisionLog(":memory:"), SQLiteDecisionLog(":memory:")
    config = {"configurable": {"thread_id": "t-async"}}
    final = single_node_graph(case.build(request, sync_log), case.state_schema).invoke(case.state, config)
    graph = single_node_graph(case.build(request, async_log), case.state_schema)
    afinal = asyncio.run(graph.ainvoke(case.state, config))
    assert comparable(afinal) == comparable(final)
    assert len(final["decisions"]) == 1 and final["decisions"][0].outcome != "rejected"
    assert comparable(list(async_log.decisions())) == comparable(list(sync_log.decisions())) != []


def layered_modes(default: str) -> list[tuple[str, dict[str, Any]]]:
    """Each layer of the mode precedence set over all the lower ones, each to a mode other than the one under it."""
    environment = "teacher"
    factory = ({"student", "auto"} - {default}).pop()
    return [
        ("default", {"expected": default}),
        ("environment", {"environment": environment, "expected": environment}),
        ("factory", {"environment": environment, "factory": factory, "expected": factory}),
        ("config", {"environment": environment, "factory": factory, "configured": default, "expected": default}),
    ]


MODE_NODES = {
    "router": (lambda mode: rule_router(mode=mode), "student"),
    "schema_enforcer": (lambda mode: create_schema_enforcer(UncalledSLM(), Order, mode=mode), "auto"),
}


@pytest.mark.parametrize(
    ("name", "layers"),
    [pytest.param(name, layers, id=f"{name}-{layer}") for name, (_, default) in MODE_NODES.items()
     for layer, layers in layered_modes(default)],
)  # fmt: skip
def test_the_mode_comes_from_the_config_then_the_factory_then_the_environment_then_the_default(
    monkeypatch, name, layers
):
    build, _ = MODE_NODES[name]
    if "environment" in layers:
        monkeypatch.setenv(MODES_ENV, f"{name}={layers['environment']}")
    else:
        monkeypatch.delenv(MODES_ENV, raising=False)
    node = build(layers.get("factory"))
    config = {"configurable": {"agentgraph_modes": {name: layers["configured"]}}} if "configured" in layers else {}
    assert node.mode_of(config) == layers["expected"]
    if name == "router":  # the mode the decision ran in is in its record
        update = node({"text": "where is order 10001?"}, config)
        assert update.update["decisions"][0].metadata["mode"] == layers["expected"]


def test_the_config_names_the_mode_of_its_node_only(monkeypatch):
    monkeypatch.delenv(MODES_ENV, raising=False)
    node = rule_router(mode="auto")
    assert node.mode_of({"configurable": {"agentgraph_modes": "schema_enforcer=teacher"}}) == "auto"
    assert node.mode_of({"configurable": {"agentgraph_modes": "*=teacher"}}) == "teacher"


def test_add_node_draws_the_routers_destinations_without_being_told():
    router = rule_router()
    builder = StateGraph(RouterState)
    builder.add_node(router).add_edge(START, "router")
    for route in ("lookup", "knowledge", "escalate"):
        builder.add_node(route, lambda state: {}).add_edge(route, END)
    graph = builder.compile()
    assert {edge.target for edge in graph.get_graph().edges if edge.source == "router"} == {
        "lookup",
        "knowledge",
        "escalate",
    }
    assert set(router.destinations) == {"lookup", "knowledge", "escalate"}
    assert graph.invoke({"text": "where is my order?"})["route"] == "lookup"
    assert graph.invoke({"text": "hello there"})["route"] == "escalate"
    assert rule_router(goto=False).destinations == ()
