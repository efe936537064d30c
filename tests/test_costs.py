"""Cost accounting: the LLM's and the SLM's cost per node and per route, against an all-LLM baseline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from agentgraph.cli import main
from agentgraph.errors import ConfigError
from agentgraph.records.costs import ModelPrice, PriceTable, StepTokens, cost_report, cost_table
from agentgraph.records.decisions import Decision
from agentgraph.records.traces import LLMCall, SQLiteTraceStore

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PRICES = PriceTable(llm={"big": ModelPrice(input=2.0, output=10.0)}, slm_per_hour=2.0,
                    step_tokens={"extract": StepTokens(prompt=500, completion=20)})  # fmt: skip


@pytest.fixture
def store(tmp_path):
    """Two threads: one the small models served (lookup), one the LLM routed and answered (escalate)."""
    store = SQLiteTraceStore(tmp_path / "decisions.db")
    at = iter(START + timedelta(seconds=10 * n) for n in range(100))

    def decision(thread: str, kind: str, strategy: str, model: str, latency_ms: float, **fields) -> None:
        store.record(Decision(node=kind, kind=kind, input="...", strategy=strategy, model=model, thread_id=thread,
                              latency_ms=latency_ms, timestamp=next(at), **fields))  # fmt: skip

    def call(thread: str, step: str, prompt: int, completion: int) -> None:
        store.record_call(LLMCall(node=step, step_type=step, messages=[], model="big", prompt_tokens=prompt,
                                  completion_tokens=completion, thread_id=thread, timestamp=next(at)))  # fmt: skip

    decision("a", "route", "classifier", "clf", 3600.0, output={"route": "lookup"})  # 0.001 h of the machine
    decision("a", "extract", "slm", "smol", 1800.0)
    call("b", "route", 1000, 10)  # the teacher routes inside the router's decision, which is stamped after
    decision("b", "route", "llm", "big", 30_000.0, output={"route": "escalate"})
    call("b", "escalate", 2000, 100)
    decision("b", "llm_call", "llm", "big", 500.0)
    yield store
    store.close()


def test_the_cost_and_the_all_llm_baseline_by_node_and_by_route(store):
    report = cost_report(store, PRICES)
    route_call, escalate_call = 0.002 + 0.0001, 0.004 + 0.001  # (tokens x $/1M) in and out
    assert report.llm_cost == pytest.approx(route_call + escalate_call)
    assert report.slm_cost == pytest.approx((0.001 + 0.0005) * 2.0), "the small models' time at $2 an hour"
    extract_call = 0.001 + 0.0002  # the price table's extract step, as no teacher extract was traced
    assert report.baseline_cost == pytest.approx(2 * route_call + extract_call + escalate_call)
    assert report.saving == pytest.approx(report.baseline_cost - report.llm_cost - report.slm_cost)
    assert report.teacher_step_tokens["route"] == StepTokens(prompt=1000, completion=10)
    assert (report.small_model_decisions, report.llm_calls, report.unpriced_steps) == (2, 2, {})
    lookup, escalate = report.by_route["lookup"], report.by_route["escalate"]
    assert (lookup.decisions, lookup.llm_calls, escalate.decisions, escalate.llm_calls) == (2, 0, 2, 2)
    assert "before a route" not in report.by_route, "the teacher's call belongs to the route it made"
    assert lookup.baseline_cost == pytest.approx(route_call + extract_call) and lookup.llm_cost == 0
    assert report.by_node["extract"].slm_cost == pytest.approx(0.001)
    assert "saved $" in cost_table(report)


def test_small_model_decisions_made_side_by_side_pay_the_machine_once_for_the_time_they_overlap(tmp_path):
    store = SQLiteTraceStore(tmp_path / "decisions.db")
    # Sixteen requests served at once: each extraction took 1 h of wall time, all in the same hour, on one machine.
    for thread in range(16):
        store.record(Decision(node="extract", kind="extract", input="...", strategy="slm", model="smol",
                              thread_id=str(thread), latency_ms=3.6e6, timestamp=START))  # fmt: skip
    # Then one alone, half an hour long, overlapping the last quarter of an hour of the batch.
    store.record(Decision(node="route", kind="route", input="...", strategy="classifier", model="clf",
                          latency_ms=1.8e6, timestamp=START + timedelta(minutes=15)))  # fmt: skip
    report = cost_report(store, PRICES)
    assert report.slm_cost == pytest.approx(1.25 * 2.0), "the machine was busy 1 h 15 min, at $2 an hour"
    # The overlapping quarter hour is shared by 17: the lone decision pays a 17th of it and its other 15 minutes.
    assert report.by_node["route"].slm_cost == pytest.approx((0.25 / 17 + 0.25) * 2.0)
    store.close()


def test_a_small_model_step_no_teacher_call_prices_is_reported_and_an_unpriced_llm_refused(store):
    report = cost_report(store, PRICES.model_copy(update={"step_tokens": {}}))
    assert report.unpriced_steps == {"extract": 1}
    store.record_call(LLMCall(step_type="plan", messages=[], model="other", prompt_tokens=1, completion_tokens=1))
    with pytest.raises(ConfigError, match="no price for the LLM 'other'"):
        cost_report(store, PRICES)


def test_the_report_command_adds_the_costs_from_a_price_table(store, tmp_path, capsys):
    prices = tmp_path / "prices.json"
    prices.write_text(PRICES.model_dump_json())
    args = ["report", "--traces", str(store.path), "--out", str(tmp_path / "report.png"), "--prices", str(prices)]
    assert main([*args, "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["saving"] == pytest.approx(cost_report(store, PRICES).saving)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "by route" in printed and f"wrote       {tmp_path / 'report-cost.png'}" in printed
    assert (tmp_path / "report-cost.png").stat().st_size > 10_000, "the cost plot beside the report's"
    prices.write_text("{not json")
    assert main(args) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_the_readme_s_price_table_is_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("### What it cost")[1].split("```json\n")[1].split("```")[0]
    table = PriceTable.model_validate_json(block)
    assert table.teacher_price == ModelPrice(input=2.0, output=8.0) and table.step_tokens["extract"].prompt == 650


def test_a_turn_of_the_example_graph_reports_its_llm_tokens_and_the_store_prices_them(embedded_slm, tmp_path):
    from scripted_llm import scripted_llm
    from test_modes import intent_call

    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.modes import NodeModes
    from agentgraph.running import LLMTokens, run_turn

    usage = {"input_tokens": 420, "output_tokens": 12, "total_tokens": 432}
    llm = scripted_llm(
        intent_call("check_refund_policy", usage_metadata=usage, response_metadata={"model_name": "big"})
    )
    parts = CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm, llm=llm, modes=NodeModes.parse("router=teacher"))
    turn = run_turn(compose(parts), "How long do I have to send something back?", thread_id="priced",
                    callbacks=[parts.llm_call_recorder])  # fmt: skip
    assert turn.llm_tokens == {"big": LLMTokens(prompt=420, completion=12)}
    assert 0 < turn.llm_ms < turn.latency_ms  # the teacher's own time, within the turn's
    report = cost_report(parts.trace_store, PRICES)
    assert report.llm_cost == pytest.approx((420 * 2.0 + 12 * 10.0) / 1e6)
    assert report.by_route["knowledge"].llm_calls == 1 and report.teacher_step_tokens["route"].prompt == 420


def test_an_slm_decision_carries_its_tokens_and_a_price_per_token_costs_them(embedded_slm, tmp_path):
    from agentgraph.graphs.customer_support.ticket import SupportTicket
    from agentgraph.nodes.schema_enforcer import create_schema_enforcer

    store = SQLiteTraceStore(tmp_path / "decisions.db")
    enforcer = create_schema_enforcer(embedded_slm, SupportTicket, output_key="ticket", decision_log=store)

    [decision] = enforcer({"text": "please cancel order 48213"}, {})["decisions"]

    slm_calls = [attempt["usage"] for attempt in decision.metadata["attempts"] if attempt["usage"] is not None]
    assert decision.strategy in ("slm", "slm_repair") and slm_calls
    assert decision.prompt_tokens == sum(usage["prompt_tokens"] for usage in slm_calls) > 100
    assert decision.completion_tokens == sum(usage["completion_tokens"] for usage in slm_calls) > 5
    per_token = PRICES.model_copy(update={"slm": ModelPrice(input=0.1, output=0.4)})
    report = cost_report(store, per_token)
    assert (report.slm_prompt_tokens, report.slm_completion_tokens) == (
        decision.prompt_tokens,
        decision.completion_tokens,
    )
    assert report.slm_cost == pytest.approx((decision.prompt_tokens * 0.1 + decision.completion_tokens * 0.4) / 1e6)
    assert cost_report(store, PRICES).slm_cost == pytest.approx(decision.latency_ms / 3.6e6 * 2.0), "by the hour"
    assert f"SLM tokens  {decision.prompt_tokens:,} read" in cost_table(report)
    store.close()
