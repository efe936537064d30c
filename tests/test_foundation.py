"""Decision log, LLM escalation, text hygiene, data split: the pieces every node builds on."""

from __future__ import annotations

import threading

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from agentgraph.errors import EmptyInputError
from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.llm import HumanHandoff, default_llm, escalate
from agentgraph.records.decisions import Decision, JSONLDecisionLog, SQLiteDecisionLog, open_decision_log
from agentgraph.text import clean_text, require_text, truncate_to_tokens


@pytest.mark.parametrize("name", ["log.sqlite", "log.jsonl"])
def test_decision_logs_keep_records_across_threads_and_reopen(tmp_path, name):
    log = open_decision_log(tmp_path / name)

    def write(worker: int) -> None:
        for i in range(25):
            log.record(Decision(node=f"n{worker % 2}", kind="route", input=f"{worker}-{i}", output="x", confidence=0.5))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reopened = open_decision_log(tmp_path / name)
    assert isinstance(reopened, JSONLDecisionLog if name.endswith(".jsonl") else SQLiteDecisionLog)
    everything = list(reopened.decisions())
    assert len(everything) == 100
    assert len({d.id for d in everything}) == 100
    assert len(list(reopened.decisions(node="n0"))) == 50
    assert list(reopened.decisions(kind="extract")) == []


def test_escalation_without_an_llm_is_a_handoff_that_keeps_the_request():
    handoff = escalate(None, "cancel my order 10001 now", reason="low confidence")
    assert isinstance(handoff, HumanHandoff)
    assert handoff.request == "cancel my order 10001 now"
    assert "no LLM is configured" in handoff.reason


def test_escalation_uses_the_llm_and_survives_its_failure():
    answer = escalate(GenericFakeChatModel(messages=iter([AIMessage("On it.")])), "hi", reason="r")
    assert answer.content == "On it."
    broken = FakeListChatModel(responses=[])  # raises when asked
    handoff = escalate(broken, "hi", reason="low confidence")
    assert isinstance(handoff, HumanHandoff)
    assert "the LLM failed" in handoff.reason


def test_default_llm_needs_a_model_name(monkeypatch):
    for name in ("AGENTGRAPH_LLM_MODEL", "AGENTGRAPH_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert default_llm() is None
    monkeypatch.setenv("AGENTGRAPH_LLM_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("AGENTGRAPH_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    llm = default_llm()
    assert llm.model_name == "gpt-4o-mini"
    assert str(llm.openai_api_base) == "http://127.0.0.1:9/v1"


def test_text_hygiene():
    assert clean_text("a\x00b\u200bc\nd\te") == "abc\nd\te"
    with pytest.raises(EmptyInputError):
        require_text(" \x00\n ")
    text, cut = truncate_to_tokens("word " * 1000, max_tokens=50, count_tokens=lambda s: len(s.split()))
    assert cut and len(text.split()) == 50


def test_split_is_fixed_stratified_and_disjoint():
    rows = load_customer_support()
    first, second = split_customer_support(rows), split_customer_support(rows)
    assert [r.text for r in first["test"]] == [r.text for r in second["test"]]
    assert sum(map(len, first.values())) == len(rows)
    assert {r.intent for r in first["dev"]} == {r.intent for r in first["test"]} == {r.intent for r in rows}
    ids = [id(r) for split in first.values() for r in split]
    assert len(ids) == len(set(ids))
