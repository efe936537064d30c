"""Canary: a candidate serves a share of a role's traffic beside the current model, and a rule promotes it or rolls
it back on its agreement with the current model and the teacher and on its turns' outcomes; each switch is logged."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from langgraph.graph import END, START, StateGraph
from test_registry import artifact

from agentgraph.cli import main
from agentgraph.distill.canary import CanaryRule, judge_canary
from agentgraph.distill.registry import ModelRegistry, UnpromotedArtifactError
from agentgraph.errors import ConfigError
from agentgraph.nodes.canary import create_canary
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult, ShadowCheck
from agentgraph.records.decisions import DecisionState
from agentgraph.records.traces import SQLiteTraceStore
from agentgraph.shadow import ShadowConfig, ShadowEvaluator

TEACHER = {"parcel": "track_order", "money": "get_refund", "bill": "check_invoice"}
"""The teacher's label for each request's key word: the truth of these tests."""


class State(DecisionState, total=False):
    request: str
    route: str
    reply: str


def labeller(name: str, wrong_on: str | None = None, shadow: ShadowEvaluator | None = None, log=None) -> ControlNode:
    """A route node answering as the teacher would, except on requests with ``wrong_on`` in them (it says 'other')."""

    def route(call: NodeCall) -> NodeResult:
        word = next(word for word in TEACHER if word in call.value)
        label = "other" if wrong_on is not None and wrong_on in call.value else TEACHER[word]
        teacher = ShadowCheck(served=label, teacher=lambda config: TEACHER[word], teacher_model="scripted-teacher")
        return NodeResult({"route": label}, output=label, strategy="classifier", model=name, shadow=teacher)

    return ControlNode(route, name="router", kind="route", input_key="request", decision_log=log, shadow=shadow)


def support_graph(router: ControlNode, log) -> object:
    """A router, then a validated reply: each turn starts with a route decision and ends validated."""

    validate = ControlNode(lambda call: NodeResult({"reply": f"about {call.value}"}, output="ok"),
                           name="validate", kind="validate", input_key="route", decision_log=log)  # fmt: skip

    builder = StateGraph(State)
    builder.add_node("router", router).add_node("validate", validate)
    builder.add_edge(START, "router").add_edge("router", "validate").add_edge("validate", END)
    return builder.compile()


def serve(graph, threads: int, *, complain_after: str | None = None) -> None:
    """Two turns per thread; the second complains when the first was routed to ``complain_after``."""
    words = list(TEACHER)
    for number in range(threads):
        config = {"configurable": {"thread_id": f"thread-{number}"}}
        first = graph.invoke({"request": f"question {number} about my {words[number % 3]}"}, config)
        second = "that is wrong, I said my bill" if first["route"] == complain_after else "thanks, and my bill?"
        graph.invoke({"request": second}, config)


def test_the_share_goes_to_the_candidate_per_thread_and_carries_the_current_models_answer():
    current, candidate = labeller("current"), labeller("candidate", wrong_on="money")
    never = create_canary(current, candidate, share=0.0, label="v2")
    always = create_canary(current, candidate, share=1.0, label="v2")
    half = create_canary(current, candidate, share=0.5, label="v2")
    request = {"request": "where is my parcel?"}
    assert "canary" not in never(request, {})["decisions"][0].metadata
    served = always({"request": "I want my money back"}, {})["decisions"][0]
    assert served.output == "other" and served.model == "candidate"
    assert served.metadata["canary"]["agree"] is False and served.metadata["canary"]["current_output"] == "get_refund"

    def on_candidate(thread: str, text: str) -> bool:
        return "canary" in half({"request": text}, {"configurable": {"thread_id": thread}})["decisions"][0].metadata

    picks = [on_candidate(f"t{n}", "my parcel") for n in range(200)]
    assert 70 < sum(picks) < 130, "about half the threads"
    assert all(on_candidate(f"t{n}", "and my bill?") == picks[n] for n in range(200)), "a thread stays on one model"
    asynchronous = asyncio.run(always.ainvoke({"request": "my parcel"}))["decisions"][0]
    assert asynchronous.metadata["canary"]["agree"] is True


def test_a_failing_candidate_never_fails_the_turn_and_mismatched_nodes_are_refused():
    def broken(call: NodeCall) -> NodeResult:
        raise RuntimeError("the candidate's weights are corrupt")

    candidate = ControlNode(broken, name="router", kind="route", input_key="request")
    served = create_canary(labeller("current"), candidate, share=1.0, label="v2")({"request": "my parcel"}, {})
    assert served["route"] == "track_order"
    assert served["decisions"][0].metadata["canary"] == {"candidate": "v2", "agree": False,
                                                         "error": "RuntimeError: the candidate's weights are corrupt"}  # fmt: skip
    other = ControlNode(broken, name="extract", kind="extract", input_key="request")
    with pytest.raises(ConfigError, match="differs from the current node in name"):
        create_canary(labeller("current"), other, share=0.1, label="v2")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        create_canary(labeller("current"), labeller("v2"), share=1.5, label="v2")


@pytest.mark.parametrize(
    ("wrong_on", "verdict"), [(None, "promote"), ("money", "rollback")], ids=["a-good-candidate", "a-bad-candidate"]
)
def test_the_rule_promotes_a_good_candidate_and_rolls_back_a_bad_one_and_logs_the_switch(tmp_path, wrong_on, verdict):
    store = SQLiteTraceStore(tmp_path / "decisions.db")
    registry = ModelRegistry(tmp_path / "models", decision_log=store)
    registry.promote("router", artifact(tmp_path / "v1"))
    with pytest.raises(UnpromotedArtifactError):
        registry.start_canary("router", artifact(tmp_path / "ungated", decision=None), share=0.3)
    candidate_folder = artifact(tmp_path / "v2")
    canary = registry.start_canary("router", candidate_folder, share=0.3)
    shadow = ShadowEvaluator(ShadowConfig(rate=1.0))
    router = create_canary(labeller("v1", log=store, shadow=shadow), labeller("v2", wrong_on=wrong_on),
                           share=canary.share, label=canary.entry.path)  # fmt: skip
    graph = support_graph(router, store)

    serve(graph, 20, complain_after="other")
    shadow.flush()
    early = judge_canary(registry, store, "router", rule=CanaryRule(min_requests=50))
    assert early.verdict == "continue" and not early.applied and registry.canary("router") is not None

    serve(graph, 400, complain_after="other")
    shadow.close()
    judged = judge_canary(registry, store, "router", rule=CanaryRule(min_requests=50))
    figures = judged.figures
    assert judged.verdict == verdict and judged.applied, judged.reasons
    assert 0.2 < figures.candidate.requests / (figures.candidate.requests + figures.current.requests) < 0.4
    assert figures.current.teacher_agreement == 1.0 and figures.current.rejected == 0.0
    if wrong_on is None:
        assert figures.agreement == 1.0 and registry.current("router").path == str(candidate_folder.resolve())
    else:
        # It is wrong on the first turns that ask for money, a third of the first turns and a sixth of its requests:
        # the current model, the teacher and the customers' complaints all say so.
        assert figures.agreement == pytest.approx(5 / 6, abs=0.06)
        assert figures.candidate.teacher_agreement == pytest.approx(5 / 6, abs=0.06)
        assert figures.candidate.rejected == pytest.approx(1 / 6, abs=0.06)
        assert registry.current("router").path == str((tmp_path / "v1").resolve())
    assert registry.canary("router") is None
    switches = [(d.kind, d.outcome, d.metadata.get("canary")) for d in store.decisions(node="model_registry")]
    assert switches == [("promote", "promoted", None), ("canary", "canary", None),
                        ("promote" if verdict == "promote" else "rollback", "promoted", True)]  # fmt: skip


def test_the_example_graph_serves_a_router_canary_and_the_command_promotes_it(tmp_path, embedded_slm, capsys):
    from agentgraph.graphs.customer_support import CustomerSupportParts
    from agentgraph.graphs.customer_support.training import support_router_path

    data = tmp_path / "data"
    retrained = shutil.copytree(support_router_path(), tmp_path / "router-v2")
    store = data / "decisions.db"
    args = ["--registry", str(data / "models"), "--store", str(store)]
    assert main(["models", "canary", "router", str(retrained), "--share", "0.5", *args]) == 2
    assert "is not promoted (it was never gated)" in capsys.readouterr().err
    assert main(["models", "canary", "router", str(retrained), "--share", "0.5", "--force", *args]) == 0
    assert "serves 50% of the requests" in capsys.readouterr().out

    parts = CustomerSupportParts(data_dir=data, slm=embedded_slm)
    router = parts.nodes()["router"]
    requests = ["where is my order 4587345?", "I want a refund", "how do I change my delivery address?",
                "cancel my purchase please", "I need an invoice for my last order"]  # fmt: skip
    served = [router({"text": text}, {"configurable": {"thread_id": f"t{n}-{text}"}}) for n in range(12)
              for text in requests]  # fmt: skip
    on_candidate = [result["decisions"][0] for result in served if "canary" in result["decisions"][0].metadata]
    assert 10 < len(on_candidate) < 50 and all(d.metadata["canary"]["agree"] for d in on_candidate)

    assert main(["models", "judge", "router", "--min-requests", "10", "--dry-run", *args]) == 0
    assert "would be promoted (dry run)" in capsys.readouterr().out and parts.registry.canary("router") is not None
    assert main(["models", "judge", "router", "--min-requests", "10", *args]) == 0
    out = capsys.readouterr().out
    assert "is promoted" in out and "agrees with the current model on 100.0%" in out
    reloaded = CustomerSupportParts(data_dir=data, slm=embedded_slm)
    assert reloaded.registry.current("router").path == str(retrained.resolve()) and not reloaded.canaries
    assert "canary" not in reloaded.nodes()["router"]({"text": requests[0]}, {})["decisions"][0].metadata


def test_the_judge_command_has_a_flag_for_every_field_of_the_canary_rule():
    # The flags are named in agentgraph.commands.models so the CLI starts without importing distillation.
    from agentgraph.commands.models import RULE_FLAGS

    assert RULE_FLAGS == {name: type(info.default) for name, info in CanaryRule.model_fields.items()}
