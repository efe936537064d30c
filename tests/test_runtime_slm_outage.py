"""An SLM that fails after start ends in the schema enforcer's LLM fallback or a handoff, never in SLMError.

Real parts: a ``VLLMSLM`` that connected to a live server which then went away
(its port closed), and an SLM whose every method raises
``SLMUnavailableError``; the frontier LLM is a scripted langchain-core model.
"""

from __future__ import annotations

import pytest
from scripted_llm import scripted_llm, tool_call
from test_slm_errors import MODELS_REPLY, serve_replies

from agentgraph.errors import SLMUnavailableError
from agentgraph.graphs.customer_support import SupportTicket
from agentgraph.llm import HumanHandoff
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.records.decisions import SQLiteDecisionLog
from agentgraph.slm import VLLMSLM
from agentgraph.slm.base import SLM

REQUEST = "can you help me canceling purchase 4587345?"


class UnreachableSLM(SLM):
    """An SLM whose server is gone: every call raises what a client of a closed port raises."""

    model_name = "unreachable"
    max_context_tokens = 2048

    def _down(self, *args, **kwargs):
        raise SLMUnavailableError("http://127.0.0.1:9")

    tokenize_chat = _score_continuations = _generate_json = _generate_text = _down


def vllm_after_an_outage() -> VLLMSLM:
    """A vLLM client made while its server answered; the server has shut down since."""
    server = serve_replies({"/v1/models": MODELS_REPLY})
    slm = VLLMSLM(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()
    return slm


@pytest.fixture(params=["vllm_after_an_outage", "unreachable"])
def down_slm(request) -> SLM:
    return vllm_after_an_outage() if request.param == "vllm_after_an_outage" else UnreachableSLM()


def test_the_llm_answers_when_the_slm_is_down_and_the_decision_says_why(down_slm, tmp_path):
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    llm = scripted_llm(tool_call("SupportTicket", order_id="4587345"))
    node = create_schema_enforcer(down_slm, SupportTicket, llm=llm, decision_log=log, output_key="ticket")

    update = node({"text": REQUEST}, {})

    assert update["ticket"] == SupportTicket(order_id="4587345") and update["handoff"] is None
    [decision] = update["decisions"]
    assert (decision.strategy, decision.outcome, decision.escalated) == ("llm", "escalated", True)
    slm_attempt, llm_attempt = decision.metadata["attempts"]
    assert slm_attempt["strategy"] == "slm" and "cannot reach the SLM server" in slm_attempt["error"]
    assert llm_attempt["strategy"] == "llm" and llm_attempt["error"] is None
    assert decision.input == {"text": REQUEST, "context": None}, "the LLM was shown the request as given"
    assert [d.id for d in log.decisions()] == [decision.id]


@pytest.mark.parametrize("mode", ["auto", "student"])
def test_without_an_llm_a_down_slm_ends_in_a_handoff(down_slm, mode):
    node = create_schema_enforcer(down_slm, SupportTicket, mode=mode)

    update = node({"text": REQUEST}, {})

    assert update["extracted"] is None and isinstance(update["handoff"], HumanHandoff)
    assert "no valid SupportTicket after slm" in update["handoff"].reason
    assert "cannot reach the SLM server" in update["handoff"].reason
    [decision] = update["decisions"]
    assert (decision.strategy, decision.outcome) == ("handoff", "handoff")


@pytest.mark.slow  # loads the example's classifier and reranker
def test_the_example_hands_lookups_and_actions_to_a_person_when_its_slm_is_down(tmp_path):
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.running import run_turn

    parts = CustomerSupportParts(data_dir=tmp_path, slm=vllm_after_an_outage())
    graph = compose(parts)

    for thread, message in [("lookup", "Where is my order 10001?"), ("action", "I want to cancel order 48213")]:
        turn = run_turn(graph, message, thread_id=thread)

        [extract] = [d for d in turn.decisions if d.kind == "extract"]
        assert (
            extract.strategy == "handoff" and "cannot reach the SLM server" in extract.metadata["attempts"][0]["error"]
        )
        assert turn.response.startswith("I have passed your request to a colleague"), turn.response
    assert parts.shop.count_writes() == 0


def test_the_consequence_modeler_asks_the_llm_or_falls_back_to_irreversible_when_the_slm_is_down(down_slm):
    from langchain_core.language_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from agentgraph.nodes.consequence import ConsequencePolicy, classify_tool_call

    @tool
    def archive_ticket(ticket_id: str) -> str:
        """Moves a support ticket to the archive."""
        return "archived"

    llm = FakeMessagesListChatModel(responses=[AIMessage("retry_safe")])
    asked = classify_tool_call(archive_ticket, {"ticket_id": "T1"}, policy=ConsequencePolicy(), slm=down_slm, llm=llm)
    alone = classify_tool_call(archive_ticket, {"ticket_id": "T1"}, policy=ConsequencePolicy(), slm=down_slm)

    assert (asked.consequence.value, asked.strategy) == ("retry_safe", "llm") and "the SLM failed" in asked.reason
    assert (alone.consequence.value, alone.strategy) == ("irreversible", "fallback")
