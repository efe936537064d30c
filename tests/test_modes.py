"""Modes per node (teacher, auto, student), switched by configuration, and shadow evaluation.

Real parts throughout: the trained customer-support classifier, SQLite trace stores and
decision logs, the example graph; the embedded SLM is loaded but never asked to generate,
except in the one slow test. Only the frontier LLM is a scripted fake.
"""

from __future__ import annotations

import itertools
import math
import threading
from datetime import UTC, datetime

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph
from scripted_llm import scripted_llm, tool_call

from agentgraph.cli import main
from agentgraph.distill.dataset import trace_examples
from agentgraph.errors import ConfigError, SLMUnavailableError
from agentgraph.graphs.customer_support import CUSTOMER_SUPPORT_INTENTS, SupportTicket
from agentgraph.llm import HumanHandoff
from agentgraph.modes import NodeModes
from agentgraph.nodes.router import (
    ClassifierStrategy,
    ConfidenceGate,
    LLMStrategy,
    RouterState,
    create_escalation_node,
    create_router,
)
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.records.decisions import Decision, DecisionState, SQLiteDecisionLog
from agentgraph.records.traces import LLMCallRecorder, SQLiteTraceStore
from agentgraph.shadow import ShadowConfig, ShadowEvaluator, shadow_agreement

ROUTES = {"track_order": "lookup", "cancel_order": "action", "check_refund_policy": "knowledge"}
PATHS = ("lookup", "action", "knowledge")
ROUTING = {"routes": ROUTES, "default_route": "knowledge"}
NEVER = ConfidenceGate(default=1.01)
"""A gate no classifier proposal passes: every in-scope request is below it."""


def intent_call(intent: str, **reply: object) -> AIMessage:
    message = tool_call("RouteChoice", intent=intent)
    return message.model_copy(update=reply) if reply else message


@pytest.fixture(scope="module")
def classifier():
    from agentgraph.classifier import IntentClassifier
    from agentgraph.graphs.customer_support import support_router_path

    return IntentClassifier.load(support_router_path())


@pytest.fixture
def store(tmp_path):
    return SQLiteTraceStore(tmp_path / "decisions.db")


@pytest.fixture
def strategy(classifier):
    """The classifier strategy, counting what it is asked."""
    strategy = ClassifierStrategy(classifier)
    strategy.asked = []
    propose = strategy.propose
    strategy.propose = lambda text: strategy.asked.append(text) or propose(text)
    return strategy


def routing_graph(router_node):
    builder = StateGraph(RouterState)
    for name in PATHS:
        builder.add_node(name, lambda state: {}).add_edge(name, END)
    builder.add_node("escalate", create_escalation_node(None)).add_edge("escalate", END)
    builder.add_node("router", router_node)
    return builder.add_edge(START, "router").compile()


def route(graph, text, store, thread_id="t-1"):
    config = {"configurable": {"thread_id": thread_id}, "callbacks": [LLMCallRecorder(store)]}
    return graph.invoke({"text": text}, config)


class TicketState(DecisionState, total=False):
    text: str
    earlier: str
    extracted: SupportTicket | None
    handoff: HumanHandoff | None


def extract(enforcer, text, store, **state):
    graph = StateGraph(TicketState).add_node("extract", enforcer).add_edge(START, "extract").compile()
    return graph.invoke({"text": text, **state}, {"callbacks": [LLMCallRecorder(store)]})


# Configuration


def test_modes_come_from_the_environment_and_command_line_entries_override_them():
    modes = NodeModes.from_env({"AGENTGRAPH_MODES": "router=teacher, *=student"})
    assert (modes.mode_of("router", default="auto"), modes.mode_of("extract", default="auto")) == ("teacher", "student")
    assert NodeModes.from_env({}).mode_of("router", default="student") == "student"
    overridden = modes.overridden_by(NodeModes.parse(["router=auto", "extract=teacher"]))
    assert overridden.nodes == {"router": "auto", "extract": "teacher"} and overridden.default == "student"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("router=expert", "unknown mode 'expert' for node 'router'; the modes are teacher, auto, student"),
        ("router", "a mode setting is NODE=MODE (e.g. router=student), not 'router'"),
        ("=teacher", "a mode setting is NODE=MODE"),
    ],
)
def test_a_bad_mode_setting_is_a_clear_error(entries, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NodeModes.parse(entries)


def test_a_node_without_modes_is_named_with_the_nodes_that_have_them():
    with pytest.raises(ConfigError, match="no node named 'route' has modes; the nodes with modes are router, extract"):
        NodeModes.parse("route=teacher").check_nodes(["router", "extract"])


@pytest.mark.parametrize("rate", ["1.5", "often"])
def test_a_bad_shadow_rate_is_a_clear_error(rate):
    with pytest.raises(ConfigError, match=r"shadow evaluation: rate: .* \(the rate is a share between 0 and 1\)"):
        ShadowConfig.from_env({"AGENTGRAPH_SHADOW_RATE": rate})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mode", "router=expert"], "unknown mode 'expert' for node 'router'; the modes are teacher, auto, student"),
        (
            ["--mode", "extractor=teacher"],
            "no node named 'extractor' has modes; the nodes with modes are router, extract",
        ),
        (["--shadow-rate", "2"], "the rate is a share between 0 and 1"),
    ],
)
def test_the_cli_rejects_bad_modes_and_rates_with_a_clear_error(options, message, capsys, tmp_path):
    code = main(["run", "customer-support", "where is my order?", "--data-dir", str(tmp_path), *options])

    assert code == 2
    assert message in capsys.readouterr().err


# The router's modes


def test_teacher_mode_routes_with_the_llm_alone_and_records_its_call_as_a_route_step(strategy, store):
    llm = scripted_llm(intent_call("cancel_order"))
    node = create_router(strategy, **ROUTING, mode="teacher", teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS),
                         decision_log=store)  # fmt: skip

    result = route(routing_graph(node), "I want to cancel order 12345", store)

    assert (result["route"], result["intent"], result["route_confidence"]) == ("action", "cancel_order", None)
    assert strategy.asked == [], "teacher mode never asks the classifier"
    [decision] = result["decisions"]
    assert (decision.strategy, decision.model, decision.metadata["mode"]) == (
        "llm",
        "ToolCallingFakeChatModel",
        "teacher",
    )
    assert [a["strategy"] for a in decision.metadata["attempts"]] == ["llm"]
    [call] = store.calls()
    assert (call.node, call.step_type, call.accepted, call.thread_id) == ("router", "route", None, "t-1")
    assert call.tool_calls == [{"name": "RouteChoice", "args": {"intent": "cancel_order"}}]
    assert call.input_text == "I want to cancel order 12345", "the request alone is the user message"


def test_llm_makes_the_routers_teacher_over_the_labels_of_its_routes(strategy, store):
    llm = scripted_llm(intent_call("cancel_order"))
    node = create_router(strategy, **ROUTING, mode="teacher", llm=llm, decision_log=store)

    result = route(routing_graph(node), "I want to cancel order 12345", store)

    assert (result["route"], result["intent"]) == ("action", "cancel_order")
    assert set(node.router.teacher.labels) == set(ROUTES) and len(llm.calls) == 1
    with pytest.raises(ConfigError, match="not both"):
        create_router(strategy, **ROUTING, llm=llm, teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS))
    with pytest.raises(ConfigError, match="give routes"):
        create_router(strategy, llm=llm)


def test_student_mode_never_asks_the_llm_and_escalates_below_the_gate(strategy, store):
    llm = scripted_llm(intent_call("cancel_order"))
    node = create_router(strategy, **ROUTING, gate=NEVER, mode="student",
                         teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS), decision_log=store)  # fmt: skip

    result = route(routing_graph(node), "I want to cancel order 12345", store)

    assert (result["route"], result["escalation_reason"]) == ("escalate", "below_gate")
    assert result["escalation"].kind == "human_handoff"
    assert strategy.asked == ["I want to cancel order 12345"]
    assert list(store.calls()) == []
    assert result["decisions"][0].metadata["mode"] == "student"


def test_auto_mode_sends_below_gate_requests_to_the_teacher_and_records_the_call(strategy, store):
    llm = scripted_llm(intent_call("cancel_order"))
    node = create_router(strategy, **ROUTING, gate=NEVER, mode="auto",
                         teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS), decision_log=store)  # fmt: skip

    result = route(routing_graph(node), "I want to cancel order 12345", store, thread_id="auto-1")

    assert (result["route"], result["intent"], result["escalation_reason"]) == ("action", "cancel_order", None)
    [decision] = result["decisions"]
    assert decision.strategy == "llm" and decision.metadata["mode"] == "auto"
    assert [a["strategy"] for a in decision.metadata["attempts"]] == ["classifier", "llm"]
    [call] = store.calls(step_type="route")
    assert (call.node, call.accepted, call.thread_id) == ("router", None, "auto-1")
    [stored] = store.decisions(node="router", kind="route")
    assert stored.id == decision.id


def test_what_the_teacher_routes_in_auto_mode_becomes_route_training_data_once_accepted(strategy, store):
    """The loop closes: below-gate requests go to the teacher, its accepted answers are the next dataset's examples."""
    from agentgraph.distill.dataset import trace_examples

    requests = {"I want to cancel order 12345": "cancel_order", "I need to track my order 777": "track_order",
                "how do I get a refund for my purchase": "get_refund"}  # fmt: skip
    llm = scripted_llm(*(intent_call(intent) for intent in requests.values()))
    node = create_router(strategy, **ROUTING, gate=NEVER, mode="auto",
                         teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS), decision_log=store)  # fmt: skip
    graph = routing_graph(node)
    for number, text in enumerate(requests):
        assert route(graph, text, store, thread_id=f"loop-{number}")["decisions"][0].strategy == "llm"

    assert trace_examples(store, role="route").examples == []  # no outcome yet: not training data
    store.mark_thread("loop-0", accepted=True)
    store.mark_thread("loop-1", accepted=True)
    store.mark_thread("loop-2", accepted=False)
    source = trace_examples(store, role="route")
    assert {(e.input, e.target) for e in source.examples} == {
        ("I want to cancel order 12345", "cancel_order"),
        ("I need to track my order 777", "track_order"),
    }
    assert source.counts["rejected"] == 1


def test_auto_mode_keeps_what_passes_the_gate_and_escalates_out_of_scope_without_the_teacher(strategy, store):
    llm = scripted_llm(intent_call("cancel_order"))
    node = create_router(strategy, **ROUTING, mode="auto", teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS))
    graph = routing_graph(node)

    confident = route(graph, "I want to cancel order 12345", store)
    off_topic = route(graph, "Can you write me a short poem about autumn leaves?", store)

    assert (confident["route"], confident["decisions"][0].strategy) == ("action", "classifier")
    assert (off_topic["route"], off_topic["escalation_reason"]) == ("escalate", "out_of_scope")
    assert list(store.calls()) == []


@pytest.mark.parametrize(
    ("mode", "teacher_replies", "reason"),
    [
        ("auto", [ConnectionError("provider down")], "teacher_failed"),
        ("teacher", [intent_call("weather_forecast")], "teacher_failed"),  # not one of the labels
        ("teacher", None, "no_teacher"),
        ("teacher", [intent_call("__oos__")], "out_of_scope"),
    ],
)
def test_without_a_teacher_answer_the_request_escalates_to_a_person(strategy, store, mode, teacher_replies, reason):
    teacher = LLMStrategy(scripted_llm(*teacher_replies), CUSTOMER_SUPPORT_INTENTS) if teacher_replies else None
    node = create_router(strategy, **ROUTING, gate=NEVER, mode=mode, teacher=teacher)

    result = route(routing_graph(node), "I want to cancel order 12345", store)

    assert (result["route"], result["escalation_reason"], result["escalation"].kind) == (
        "escalate",
        reason,
        "human_handoff",
    )
    error = result["decisions"][0].metadata["teacher_error"]
    assert (error is not None) == (reason == "teacher_failed")


def test_the_teacher_confidence_is_the_label_token_probability_when_the_provider_returns_logprobs():
    tokens = [('{"', -0.01), ("intent", -0.02), ('":"', -0.01), ("cancel", -0.1), ("_order", -0.2), ('"}', -0.01)]
    reply = intent_call(
        "cancel_order",
        content='{"intent":"cancel_order"}',
        response_metadata={"logprobs": {"content": [{"token": t, "logprob": lp} for t, lp in tokens]}},
    )
    with_logprobs = LLMStrategy(scripted_llm(reply), ["track_order", "cancel_order"]).propose("cancel 12345")
    without = LLMStrategy(scripted_llm(intent_call("cancel_order")), ["track_order", "cancel_order"]).propose(
        "cancel 12345"
    )

    assert with_logprobs.confidence == pytest.approx(math.exp(-0.3))
    assert without.confidence is None


# Shadow evaluation


def test_shadow_comparisons_are_logged_as_decisions_in_the_background(strategy, store):
    released = threading.Event()

    def teacher_replies():
        released.wait(timeout=60)  # the request has to be answered while the teacher is still thinking
        yield intent_call("cancel_order")
        yield intent_call("check_refund_policy")
        raise ConnectionError("provider down")

    llm = scripted_llm(teacher_replies())
    shadow = ShadowEvaluator(ShadowConfig(rate=1.0), callbacks=[LLMCallRecorder(store)])
    node = create_router(strategy, **ROUTING, decision_log=store, shadow=shadow,
                         teacher=LLMStrategy(llm, CUSTOMER_SUPPORT_INTENTS))  # fmt: skip
    graph = routing_graph(node)
    texts = ["I want to cancel order 12345", "can you help me track order 98765?", "how do I recover my password?"]

    students = [route(graph, text, store, thread_id=f"shadow-{i}")["decisions"][0] for i, text in enumerate(texts)]
    assert list(store.decisions(kind="shadow")) == [], "the requests did not wait for the teacher"
    released.set()
    shadow.close()

    assert [s.metadata["mode"] for s in students] == ["student"] * 3
    assert [s.strategy for s in students] == ["classifier"] * 3
    shadows = {d.metadata["shadow_of"]: d for d in store.decisions(node="router", kind="shadow")}
    expected = [
        ("cancel_order", True, "agree"),
        ("check_refund_policy", False, "disagree"),
        (None, None, "teacher_failed"),
    ]
    for student, (teacher, agree, outcome) in zip(students, expected, strict=True):
        decision = shadows[student.id]
        assert decision.input == student.input
        assert decision.output == {"student": student.output["intent"], "teacher": teacher, "agree": agree}
        assert (decision.outcome, decision.confidence, decision.strategy) == (outcome, student.confidence, "classifier")
        assert (decision.model, decision.thread_id) == ("ToolCallingFakeChatModel", student.thread_id)
        assert decision.metadata == {"student_model": "all-MiniLM-L6-v2-int8", "shadow_of": student.id}
    assert students[0].output["intent"] == "cancel_order" and students[1].output["intent"] == "track_order"
    calls = list(store.calls())
    assert [(c.step_type, c.metadata["agentgraph_shadow"], c.thread_id) for c in calls] == [
        ("route", True, f"shadow-{i}") for i in range(3)
    ]
    assert [c.metadata["shadow_of"] for c in calls] == [s.id for s in students]
    assert calls[2].error is not None and calls[2].accepted is False


def test_the_sampled_share_matches_the_rate_and_a_seed_repeats_its_sample(classifier, support_splits, tmp_path):
    texts = [row.text for row in support_splits["test"][:200]]

    def sample(seed, name):
        log = SQLiteDecisionLog(tmp_path / f"{name}.db")
        shadow = ShadowEvaluator(ShadowConfig(rate=0.25, seed=seed))
        teacher = LLMStrategy(scripted_llm(itertools.repeat(intent_call("track_order"))), CUSTOMER_SUPPORT_INTENTS)
        node = create_router(ClassifierStrategy(classifier), decision_log=log, shadow=shadow, teacher=teacher)
        for text in texts:
            node({"text": text}, {})
        shadow.close()
        accepted = [d for d in log.decisions(kind="route") if not d.escalated]
        return len(accepted), {d.input for d in log.decisions(kind="shadow")}

    accepted, sampled = sample(7, "first")
    assert accepted > 150
    assert abs(len(sampled) / accepted - 0.25) < 0.08
    assert sample(7, "again")[1] == sampled
    assert sample(8, "other")[1] != sampled


def test_agreement_over_time_is_the_agreeing_share_of_answered_comparisons_per_period():
    def shadow(day, hour, agree):
        return Decision(node="router", kind="shadow", input="x", outcome="agree",
                        output={"student": "a", "teacher": None if agree is None else "a", "agree": agree},
                        timestamp=datetime(2025, 3, day, hour, tzinfo=UTC))  # fmt: skip

    decisions = [shadow(3, 9, True), shadow(3, 17, False), shadow(3, 18, None), shadow(4, 8, True), shadow(5, 1, None)]
    decisions.append(Decision(node="router", kind="route", input="x", timestamp=datetime(2025, 3, 4, tzinfo=UTC)))

    by_day = shadow_agreement(decisions)
    assert by_day == [
        (datetime(2025, 3, 3, tzinfo=UTC), 2, 0.5),
        (datetime(2025, 3, 4, tzinfo=UTC), 1, 1.0),
        (datetime(2025, 3, 5, tzinfo=UTC), 0, None),
    ]
    assert shadow_agreement(decisions, bucket="week") == [(datetime(2025, 3, 3, tzinfo=UTC), 3, 2 / 3)]
    assert shadow_agreement(decisions, node="schema_enforcer") == []


# The schema enforcer's modes


def test_schema_enforcer_teacher_mode_asks_the_llm_alone(embedded_slm, store, monkeypatch):
    monkeypatch.setattr(embedded_slm, "structured", lambda *args, **kwargs: pytest.fail("teacher mode asked the SLM"))
    llm = scripted_llm(tool_call("SupportTicket", order_id="4587345"))
    node = create_schema_enforcer(embedded_slm, SupportTicket, llm=llm, mode="teacher", decision_log=store)

    update = extract(node, "can you help me canceling purchase 4587345?", store)

    assert update["extracted"] == SupportTicket(order_id="4587345")
    [decision] = update["decisions"]
    assert (decision.strategy, decision.metadata["mode"]) == ("llm", "teacher")
    assert [a["strategy"] for a in decision.metadata["attempts"]] == ["llm"]
    [call] = store.calls()
    assert (call.step_type, call.accepted) == ("extract", None)
    assert "<<<\ncan you help me canceling purchase 4587345?\n>>>" in call.messages[-1]["content"], (
        "the LLM reads it fenced"
    )
    assert call.input_text == "can you help me canceling purchase 4587345?", "a distillation example is the request"


def test_a_traced_extraction_with_context_is_no_example_of_the_request_alone(embedded_slm, store):
    llm = scripted_llm(tool_call("SupportTicket", order_id="4587345"))
    node = create_schema_enforcer(embedded_slm, SupportTicket, llm=llm, mode="teacher", context_key="earlier")

    extract(node, "cancel it please", store, earlier="my order is 4587345")

    [call] = store.calls()
    assert "my order is 4587345" in call.messages[-1]["content"] and call.input_text is None
    store.mark(call.id, accepted=True)
    assert trace_examples(store, role="extract").counts["unusable"] == 1


@pytest.mark.parametrize(("mode", "ladder"), [("student", ["slm"]), ("auto", ["slm", "llm"])])
def test_when_the_slm_is_down_student_mode_hands_off_and_auto_mode_asks_the_llm(embedded_slm, store, monkeypatch,
                                                                                 mode, ladder):  # fmt: skip
    def down(*args, **kwargs):
        raise SLMUnavailableError("http://127.0.0.1:8000")

    monkeypatch.setattr(embedded_slm, "structured", down)
    llm = scripted_llm(tool_call("SupportTicket", order_id="4587345"))
    node = create_schema_enforcer(embedded_slm, SupportTicket, llm=llm, mode=mode)

    update = extract(node, "can you help me canceling purchase 4587345?", store)

    [decision] = update["decisions"]
    assert [a["strategy"] for a in decision.metadata["attempts"]] == ladder
    assert decision.metadata["mode"] == mode
    assert len(list(store.calls())) == (mode == "auto")
    if mode == "student":
        assert update["extracted"] is None
        assert "student mode: the LLM is not asked" in update["handoff"].reason
    else:
        assert update["extracted"] == SupportTicket(order_id="4587345")


def test_schema_enforcer_teacher_mode_without_an_llm_hands_off(embedded_slm):
    update = create_schema_enforcer(embedded_slm, SupportTicket, mode="teacher")({"text": "cancel order 4587345"}, {})

    assert update["extracted"] is None
    assert update["handoff"].reason == "schema_enforcer: no valid SupportTicket after no attempt (no LLM is configured)"


@pytest.mark.slow
def test_schema_enforcer_shadow_compares_the_slm_object_with_the_llm_one(embedded_slm, store):
    shadow = ShadowEvaluator(ShadowConfig(rate=1.0), callbacks=[LLMCallRecorder(store)])
    llm = scripted_llm(tool_call("SupportTicket"))
    node = create_schema_enforcer(embedded_slm, SupportTicket, llm=llm, decision_log=store, shadow=shadow)

    update = extract(node, "where is my order?", store)
    shadow.close()

    [student] = update["decisions"]
    assert student.strategy in ("slm", "slm_repair")
    [decision] = store.decisions(kind="shadow")
    empty = SupportTicket().model_dump(mode="json")
    assert decision.output == {"student": empty, "teacher": empty, "agree": True}
    assert decision.input == {"text": "where is my order?", "context": None} == student.input
    assert decision.metadata == {"student_model": embedded_slm.model_name, "shadow_of": student.id}
    [call] = store.calls()
    assert (call.step_type, call.metadata["agentgraph_shadow"]) == ("extract", True)


# The example graph


@pytest.fixture(scope="module")
def support_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("support")


def test_the_example_graph_in_teacher_mode_without_an_llm_hands_the_request_to_a_person(embedded_slm, support_dir):
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.running import run_turn

    parts = CustomerSupportParts(data_dir=support_dir, slm=embedded_slm, modes=NodeModes.parse("router=teacher"))

    turn = run_turn(compose(parts), "Where is my order 10001?", thread_id="teacher-none")

    assert (turn.route, turn.llm_calls, turn.nodes[:2]) == ("escalate", 0, ["router", "escalate"])
    assert "Your ticket is HO-" in turn.response
    [decision] = [d for d in turn.decisions if d.kind == "route"]
    assert (decision.outcome, decision.metadata["mode"]) == ("no_teacher", "teacher")


def test_the_example_graph_in_teacher_mode_routes_with_the_llm(embedded_slm, support_dir):
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.running import run_turn

    llm = scripted_llm(intent_call("check_refund_policy"))
    parts = CustomerSupportParts(
        data_dir=support_dir, slm=embedded_slm, llm=llm, modes=NodeModes.parse("router=teacher")
    )

    turn = run_turn(compose(parts), "How long do I have to send something back?", thread_id="teacher-llm",
                    callbacks=[parts.llm_call_recorder])  # fmt: skip

    assert (turn.route, turn.intent, turn.llm_calls, turn.slm_calls) == ("knowledge", "check_refund_policy", 1, 1)
    assert "refund" in turn.response.lower()
    [call] = parts.trace_store.calls(thread_id="teacher-llm")
    assert (call.node, call.step_type) == ("router", "route")


def test_the_cli_runs_the_router_in_teacher_mode_without_an_llm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGENTGRAPH_LLM_MODEL", "")
    monkeypatch.delenv("AGENTGRAPH_SLM_URL", raising=False)

    code = main(["run", "customer-support", "Where is my order 10001?", "--mode", "router=teacher", "--json",
                 "--data-dir", str(tmp_path)])  # fmt: skip

    assert code == 0
    assert '"route":"escalate"' in capsys.readouterr().out
