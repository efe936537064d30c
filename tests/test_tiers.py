"""LLM tiers: the step-type table, the environment, the cascade (sync, async, structured output), and tier records."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ValidationError
from scripted_llm import answering_llm, scripted_llm, tool_call

from agentgraph.errors import ConfigError
from agentgraph.extraction.attempts import ModelInput
from agentgraph.extraction.extractor import Extractor
from agentgraph.llm import llm_name
from agentgraph.records.costs import TIER_ORDER, ModelPrice, PriceTable, cost_report, cost_table
from agentgraph.records.traces import TIER_KEY, LLMCall, LLMCallRecorder, SQLiteTraceStore
from agentgraph.routing.strategies import LLMStrategy
from agentgraph.tiers import TIERS, CascadeChatModel, LLMTiers, answer_confidence


class Order(BaseModel):
    """An order reference."""

    order_id: str


def with_logprob(text: str, logprob: float, **fields) -> AIMessage:
    """A reply whose every token the model gave ``exp(logprob)``, as OpenAI reports log-probs."""
    tokens = [{"token": word, "logprob": logprob} for word in text.split()] or [{"token": "", "logprob": logprob}]
    return AIMessage(text, response_metadata={"logprobs": {"content": tokens}}, **fields)


def cascade(efficient, frontier, **settings) -> CascadeChatModel:
    model = LLMTiers(models={"efficient": efficient, "frontier": frontier}, cascades={"escalate": "frontier"})
    llm = model.model_for("escalate", **settings)
    assert isinstance(llm, CascadeChatModel)
    return llm


# The tier table.


def test_each_step_type_gets_its_tiers_model_tagged_with_the_tier():
    efficient, frontier, reasoning = answering_llm("cheap"), answering_llm("strong"), answering_llm("deep")
    tiers = LLMTiers(
        models={"efficient": efficient, "frontier": frontier, "reasoning": reasoning},
        steps={"route": "efficient", "plan": "frontier", "replan": "reasoning"},
        cascades={},
    )
    expected = ["efficient", "frontier", "reasoning", "frontier"]
    assert [tiers.tier_for(step) for step in ("route", "plan", "replan", "unlisted")] == expected, (
        "a step type the table does not list gets the default tier"
    )
    answers = {"route": (efficient, "cheap"), "plan": (frontier, "strong"), "replan": (reasoning, "deep")}
    for step, (model, answer) in answers.items():
        llm = tiers.model_for(step)
        assert type(llm) is type(model) and llm.metadata[TIER_KEY] == tiers.tier_for(step)
        assert llm.invoke("hello").content == answer
    assert TIER_KEY not in (efficient.metadata or {}), "the configured model itself is left as it was"


def test_a_tier_without_a_model_is_served_by_the_next_one_up_else_the_nearest_below():
    only_frontier = LLMTiers(models={"frontier": answering_llm()})
    assert {only_frontier.tier_for(step) for step in ("route", "plan", "replan", "escalate")} == {"frontier"}
    llm = only_frontier.model_for("escalate")
    assert not isinstance(llm, CascadeChatModel), "one model makes no cascade, whatever the table says"
    assert llm.metadata[TIER_KEY] == "frontier", "the tier recorded is the one that answers"
    only_efficient = LLMTiers(models={"efficient": answering_llm()})
    assert only_efficient.tier_for("replan") == "efficient"


def test_with_no_model_configured_there_is_no_model_for_any_step():
    assert LLMTiers().model_for("plan") is None and LLMTiers().tier_for("plan") is None


def test_the_costs_list_the_tiers_in_the_tiers_order():
    assert TIER_ORDER == TIERS == ("efficient", "frontier", "reasoning")


# The environment.


def test_todays_single_llm_variable_configures_the_frontier_tier_that_serves_every_step():
    tiers = LLMTiers.from_env({"AGENTGRAPH_LLM_MODEL": "gpt-big", "AGENTGRAPH_LLM_BASE_URL": "http://llm:8000/v1"})
    assert set(tiers.models) == {"frontier"}
    llm = tiers.model_for("route")
    assert isinstance(llm, ChatOpenAI) and llm_name(llm) == "gpt-big" and llm.openai_api_base == "http://llm:8000/v1"
    assert tiers.model_for("escalate").metadata[TIER_KEY] == "frontier"


def test_each_tier_its_own_model_endpoint_and_key_and_the_tables_from_the_environment():
    tiers = LLMTiers.from_env({
        "AGENTGRAPH_LLM_MODEL": "gpt-old", "AGENTGRAPH_LLM_API_KEY": "shared",
        "AGENTGRAPH_LLM_EFFICIENT_MODEL": "small", "AGENTGRAPH_LLM_EFFICIENT_BASE_URL": "http://local:8000/v1",
        "AGENTGRAPH_LLM_EFFICIENT_LOGPROBS": "1",
        "AGENTGRAPH_LLM_FRONTIER_MODEL": "big", "AGENTGRAPH_LLM_REASONING_MODEL": "thinker",
        "AGENTGRAPH_LLM_REASONING_API_KEY": "own",
        "AGENTGRAPH_LLM_STEPS": "plan=reasoning, summarise=efficient", "AGENTGRAPH_LLM_CASCADES": "summarise=reasoning",
        "AGENTGRAPH_LLM_MIN_CONFIDENCE": "0.8",
    })  # fmt: skip
    models = tiers.models
    names = {tier: llm_name(model) for tier, model in models.items()}
    assert names == {"efficient": "small", "frontier": "big", "reasoning": "thinker"}, "a tier's own model wins"
    assert models["efficient"].openai_api_base == "http://local:8000/v1" and models["efficient"].logprobs is True
    assert models["frontier"].logprobs is None, "log-probs are asked only of the tiers that say so"
    assert models["frontier"].openai_api_key.get_secret_value() == "shared"
    assert models["reasoning"].openai_api_key.get_secret_value() == "own"
    tables = (tiers.steps["plan"], tiers.steps["escalate"], tiers.tier_for("summarise"))
    assert tables == ("reasoning", "efficient", "efficient"), "the environment changes entries of the default table"
    summarise = tiers.model_for("summarise")
    assert isinstance(summarise, CascadeChatModel) and list(summarise.tiers) == list(TIERS)
    assert summarise.min_confidence == 0.8 and summarise.model_name == "small > big > thinker"


@pytest.mark.parametrize(
    ("name", "value"),
    [("AGENTGRAPH_LLM_STEPS", "plan=genius"), ("AGENTGRAPH_LLM_STEPS", "plan"), ("AGENTGRAPH_LLM_CASCADES", "=frontier"),
     ("AGENTGRAPH_LLM_MIN_CONFIDENCE", "sure"), ("AGENTGRAPH_LLM_DEFAULT_TIER", "premium")],
)  # fmt: skip
def test_a_malformed_tier_setting_is_a_config_error(name, value):
    with pytest.raises(ConfigError):
        LLMTiers.from_env({"AGENTGRAPH_LLM_MODEL": "gpt-big", name: value})


# The cascade: chat replies.


def test_an_answer_that_passes_never_reaches_the_next_tier():
    efficient, frontier = answering_llm("Your parcel left on Monday."), answering_llm()
    llm = cascade(efficient, frontier, validator=lambda reply: "parcel" in reply.content)
    assert llm.invoke("Where is my parcel?").content == "Your parcel left on Monday."
    assert len(efficient.calls) == 1 and frontier.calls == []


def test_an_answer_the_validator_rejects_goes_to_the_next_tier_once():
    efficient, frontier = answering_llm("I don't know."), answering_llm("It left on Monday.")
    llm = cascade(efficient, frontier, validator=lambda reply: "know" not in reply.content)
    assert llm.invoke("Where is my parcel?").content == "It left on Monday."
    assert len(efficient.calls) == 1 and len(frontier.calls) == 1


def test_a_validator_that_raises_a_value_error_rejects_the_answer():
    def must_name_a_day(reply):
        if "Monday" not in reply.content:
            raise ValueError("no day")
        return True

    efficient, frontier = answering_llm("Soon."), answering_llm("It left on Monday.")
    assert cascade(efficient, frontier, validator=must_name_a_day).invoke("When?").content == "It left on Monday."


def test_a_low_confidence_answer_goes_to_the_next_tier_a_confident_one_does_not():
    efficient = scripted_llm(with_logprob("It left Monday.", -0.05), with_logprob("Perhaps Tuesday?", -1.5))
    frontier = answering_llm("It left on Tuesday.")
    llm = cascade(efficient, frontier, min_confidence=0.5)
    assert llm.invoke("When did it leave?").content == "It left Monday.", "exp(-0.05) = 0.95 per token: kept"
    assert frontier.calls == []
    assert llm.invoke("When did the other one leave?").content == "It left on Tuesday.", "exp(-1.5) = 0.22: climbed"
    assert len(efficient.calls) == 2 and len(frontier.calls) == 1


def test_an_answer_without_logprobs_is_judged_on_validity_alone():
    assert answer_confidence(AIMessage("fine")) is None
    assert answer_confidence(with_logprob("a b", -1.0)) == pytest.approx(0.3679, abs=1e-4)
    efficient, frontier = answering_llm("fine"), answering_llm()
    assert cascade(efficient, frontier, min_confidence=0.99).invoke("hi").content == "fine" and frontier.calls == []


def test_a_failed_call_goes_to_the_next_tier_and_the_last_tiers_answer_is_final():
    efficient, frontier = scripted_llm(TimeoutError("the small server is down")), answering_llm("Here I am.")
    assert cascade(efficient, frontier).invoke("hi").content == "Here I am."
    # Nothing above the frontier tier here: its answer stands, rejected or not.
    efficient, frontier = answering_llm("no"), answering_llm("no either")
    assert cascade(efficient, frontier, validator=lambda reply: False).invoke("hi").content == "no either"
    efficient, frontier = answering_llm("no"), scripted_llm(TimeoutError("down too"))
    with pytest.raises(TimeoutError):
        cascade(efficient, frontier, validator=lambda reply: False).invoke("hi")


def test_the_cascade_climbs_all_three_tiers_in_order():
    efficient, frontier, reasoning = answering_llm("a"), answering_llm("b"), answering_llm("c")
    tiers = LLMTiers(models={"efficient": efficient, "frontier": frontier, "reasoning": reasoning},
                     steps={"hard": "efficient"}, cascades={"hard": "reasoning"})  # fmt: skip
    assert tiers.model_for("hard", validator=lambda reply: reply.content == "c").invoke("hi").content == "c"
    assert [len(model.calls) for model in (efficient, frontier, reasoning)] == [1, 1, 1]


def test_the_async_path_cascades_the_same_way():
    efficient = scripted_llm(AIMessage("sure"), with_logprob("unsure", -2.0))
    frontier = answering_llm("the frontier's answer")
    llm = cascade(efficient, frontier)

    async def ask_twice():
        return await llm.ainvoke("first"), await llm.ainvoke("second")

    first, second = asyncio.run(ask_twice())
    assert (first.content, second.content) == ("sure", "the frontier's answer")
    assert len(efficient.calls) == 2 and len(frontier.calls) == 1


def test_stream_and_batch_go_through_the_cascade():
    efficient, frontier = answering_llm("bad"), answering_llm("good")
    llm = cascade(efficient, frontier, validator=lambda reply: reply.content == "good")
    assert [chunk.content for chunk in llm.stream("hi")] == ["good"]
    assert [reply.content for reply in llm.batch(["a", "b"])] == ["good", "good"]


# The cascade: structured output (the schema enforcer's fallback and the router's teacher).


def test_a_structured_answer_that_does_not_parse_goes_to_the_next_tier():
    efficient = scripted_llm(tool_call("Order", number=48213))
    frontier = scripted_llm(tool_call("Order", order_id="48213"))
    structured = cascade(efficient, frontier).with_structured_output(Order)
    assert structured.invoke("cancel 48213") == Order(order_id="48213")
    assert len(efficient.calls) == 1 and len(frontier.calls) == 1


def test_a_structured_answer_that_parses_never_reaches_the_next_tier_and_include_raw_keeps_the_reply():
    efficient, frontier = scripted_llm(tool_call("Order", order_id="48213")), answering_llm()
    reply = cascade(efficient, frontier).with_structured_output(Order, include_raw=True).invoke("cancel 48213")
    assert reply["parsed"] == Order(order_id="48213") and reply["parsing_error"] is None
    assert isinstance(reply["raw"], AIMessage) and frontier.calls == []


def test_a_structured_answer_is_judged_by_the_validator_and_its_confidence_too():
    efficient = scripted_llm(tool_call("Order", order_id="99999"), with_logprob("", -3.0, tool_calls=[
        {"name": "Order", "args": {"order_id": "48213"}, "id": "call-1"}]))  # fmt: skip
    frontier = scripted_llm(tool_call("Order", order_id="48213"), tool_call("Order", order_id="48213"))
    structured = cascade(efficient, frontier, validator=lambda order: order.order_id == "48213").with_structured_output(
        Order
    )
    assert structured.invoke("cancel 48213") == Order(order_id="48213"), "the validator sees the parsed value"
    assert structured.invoke("cancel 48213") == Order(order_id="48213"), "valid, but exp(-3) = 0.05 sure"
    assert len(efficient.calls) == 2 and len(frontier.calls) == 2


def test_the_last_tiers_unparsable_answer_raises_as_a_models_own_structured_output_does():
    efficient, frontier = scripted_llm(tool_call("Order", number=1)), scripted_llm(tool_call("Order", number=2))
    with pytest.raises(ValidationError):
        cascade(efficient, frontier).with_structured_output(Order).invoke("cancel it")
    efficient, frontier = scripted_llm(tool_call("Order", number=1)), scripted_llm(tool_call("Order", number=2))
    reply = cascade(efficient, frontier).with_structured_output(Order, include_raw=True).invoke("cancel it")
    assert reply["parsed"] is None and isinstance(reply["parsing_error"], ValidationError)


def test_structured_output_cascades_on_the_async_path():
    efficient, frontier = scripted_llm(tool_call("Order", number=1)), scripted_llm(tool_call("Order", order_id="7"))
    structured = cascade(efficient, frontier).with_structured_output(Order)
    assert asyncio.run(structured.ainvoke("cancel 7")) == Order(order_id="7")
    assert len(efficient.calls) == 1 and len(frontier.calls) == 1


def test_the_router_teacher_and_the_schema_enforcer_fallback_take_a_tiers_model_unchanged():
    tiers = LLMTiers(models={"efficient": scripted_llm(tool_call("RouteChoice", intent="weather")),
                             "frontier": scripted_llm(tool_call("RouteChoice", intent="track_order"))})  # fmt: skip
    teacher = LLMStrategy(tiers.model_for("route"), ["track_order", "cancel_order"])
    assert teacher.propose("where is my parcel?").label == "track_order", "the efficient tier's label is no label"
    tiers = LLMTiers(
        models={"efficient": scripted_llm(tool_call("Order", order_id="48213")), "frontier": answering_llm()}
    )
    extractor = Extractor(None, Order, llm=tiers.model_for("extract"))
    shown = ModelInput(text="cancel 48213", context="", message="cancel 48213", truncated={})
    assert extractor.llm_instance(shown) == Order(order_id="48213")
    assert tiers.models["frontier"].calls == []


# Tier records and the cost per tier.


def test_every_call_records_its_tier_and_the_cost_report_shows_the_share_per_tier():
    store = SQLiteTraceStore(":memory:")
    recorder = LLMCallRecorder(store)
    efficient = scripted_llm(AIMessage("sure", usage_metadata={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}),
                             AIMessage("bad", usage_metadata={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}),
                             AIMessage("fine", usage_metadata={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}))  # fmt: skip
    frontier = scripted_llm(AIMessage("good", usage_metadata={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}))  # fmt: skip
    llm = cascade(efficient, frontier, validator=lambda reply: reply.content != "bad")
    config = {"callbacks": [recorder], "tags": ["step:escalate"]}
    assert llm.invoke("first", config).content == "sure"
    assert llm.invoke("second", config).content == "good"
    assert asyncio.run(llm.ainvoke("third", config)).content == "fine"
    calls = list(store.calls())
    assert [call.tier for call in calls] == ["efficient", "efficient", "frontier", "efficient"]
    assert {call.step_type for call in calls} == {"escalate"}, "the cascade's own run is no model call"
    prices = PriceTable(llm={"GenericFakeChatModel": ModelPrice(input=1.0, output=1.0)},
                        default=ModelPrice(input=1.0, output=1.0))  # fmt: skip
    report = cost_report(store, prices)
    assert report.llm_calls == 4 and set(report.by_tier) == {"efficient", "frontier"}
    efficient_share, frontier_share = report.by_tier["efficient"], report.by_tier["frontier"]
    assert (efficient_share.llm_calls, frontier_share.llm_calls) == (3, 1)
    assert (efficient_share.call_share, frontier_share.cost_share) == (0.75, pytest.approx(0.25))
    assert efficient_share.llm_cost == pytest.approx(3 * 110 / 1e6)
    table = cost_table(report)
    assert "by LLM tier" in table
    assert table.index("  efficient") < table.index("  frontier"), "cheapest first"
    assert "75.0%" in table and "25.0%" in table


def test_a_call_outside_the_tiers_is_untiered_and_old_records_load_without_a_tier():
    old = {"id": "abc", "timestamp": "2026-01-01T00:00:00+00:00", "messages": [], "model": "big"}
    assert LLMCall.model_validate_json(json.dumps(old)).tier is None
    store = SQLiteTraceStore(":memory:")
    store.record_call(LLMCall(messages=[], model="big", prompt_tokens=10, completion_tokens=1))
    report = cost_report(store, PriceTable(default=ModelPrice(input=1.0, output=1.0)))
    assert report.by_tier["untiered"].call_share == 1.0
    assert "by LLM tier" not in cost_table(report), "a store with no tiered call prints as before"
