"""Personal data never reaches a file in the clear: not the decisions, the LLM traces, the keys or the checkpoints.

Each test runs turns that carry a card number, an e-mail address and an IBAN,
then reads the raw bytes of every file the stores wrote (SQLite databases with
their WAL files, a JSONL log). Real parts: SQLite, LangGraph's SQLite
checkpointer, the guarded tool node and the idempotency store; the frontier LLM
is a scripted langchain-core chat model.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages

from agentgraph.checkpointing import CHECKPOINT_KEY_ENV, new_checkpoint_key, sqlite_checkpointer
from agentgraph.errors import CheckpointDecryptionError, ConfigError
from agentgraph.idempotency import SQLiteIdempotencyStore
from agentgraph.nodes.consequence import ConsequencePolicy, create_guarded_tool_node
from agentgraph.records.decisions import Decision, DecisionState, JSONLDecisionLog
from agentgraph.records.traces import LLMCallRecorder, SQLiteTraceStore
from agentgraph.running import run_turn

CARD, CARD_AS_ORDER_ID = "4111 1111 1111 1111", "4111111111111111"
EMAIL = "jo.smith@example.com"
IBAN, IBAN_COMPACT = "DE89 3704 0044 0532 0130 00", "DE89370400440532013000"
SECRETS = (CARD, CARD_AS_ORDER_ID, EMAIL, IBAN, IBAN_COMPACT)
MESSAGE = f"My card {CARD} was charged twice; refund it to {IBAN} and write to {EMAIL}."


def files_holding(folder: Path, secrets=SECRETS) -> dict[str, list[str]]:
    """Every file under ``folder`` whose raw bytes hold one of ``secrets``, with the secrets it holds."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        held = [secret for secret in secrets if secret.encode() in data]
        if held:
            found[path.name] = held
    return found


class SupportState(DecisionState, total=False):
    text: str
    messages: Annotated[list[AnyMessage], add_messages]
    response: str


def support_graph(folder: Path, llm, trace_store: SQLiteTraceStore):
    """Logs a decision on the message, asks the LLM about it, and cancels an "order" numbered like a card."""

    @tool
    def cancel_order(order_id: str) -> str:
        """Cancel an order."""
        return f"order {order_id} cancelled; a confirmation went to {EMAIL}"

    def note(state: SupportState, config: RunnableConfig) -> dict[str, Any]:
        decision = Decision(node="note", kind="route", input=state["text"], output={"route": "action"},
                            thread_id=config["configurable"]["thread_id"])  # fmt: skip
        trace_store.record(decision)
        return {"decisions": [decision]}

    def ask(state: SupportState) -> dict[str, Any]:
        reply = llm.invoke(state["text"]).text
        call = {"name": "cancel_order", "args": {"order_id": CARD_AS_ORDER_ID}, "id": "call-1"}
        return {"response": reply, "messages": [AIMessage("", tool_calls=[call])]}

    guarded = create_guarded_tool_node(
        [cancel_order],
        policy=ConsequencePolicy(tools={"cancel_order": "retry_safe"}),
        idempotency_store=SQLiteIdempotencyStore(folder / "idempotency.db"),
        decision_log=trace_store,
    )
    builder = StateGraph(SupportState)
    builder.add_node("note", note).add_node("ask", ask).add_node("tools", guarded)
    builder.add_edge(START, "note").add_edge("note", "ask").add_edge("ask", "tools")
    return builder.compile(checkpointer=sqlite_checkpointer(folder / "checkpoints.db"))


def test_a_turn_with_a_card_an_email_and_an_iban_leaves_none_of_them_in_any_file(tmp_path):
    trace_store = SQLiteTraceStore(tmp_path / "decisions.db")
    llm = GenericFakeChatModel(messages=iter([AIMessage(f"I will refund {IBAN} and confirm to {EMAIL}.")]))
    graph = support_graph(tmp_path, llm, trace_store)

    turn = run_turn(graph, MESSAGE, thread_id="t1", callbacks=[LLMCallRecorder(trace_store)])

    assert files_holding(tmp_path) == {}
    # What was stored is all there, masked; the thread's state comes back whole.
    assert next(trace_store.decisions(node="note")).input == (
        "My card [CARD_NUMBER] was charged twice; refund it to [IBAN] and write to [EMAIL]."
    )
    [call] = trace_store.calls(thread_id="t1")
    assert call.messages == [{"role": "user", "content": next(trace_store.decisions(node="note")).input}]
    assert call.output == "I will refund [IBAN] and confirm to [EMAIL]."
    [classified] = trace_store.decisions(kind="classify_tool")
    assert classified.input["arguments"] == {"order_id": "[CARD_NUMBER]"}
    [key] = [d.metadata["idempotency_key"] for d in turn.decisions if d.kind == "classify_tool"]
    assert SQLiteIdempotencyStore(tmp_path / "idempotency.db").get(key).result["content"] == (
        "order [CARD_NUMBER] cancelled; a confirmation went to [EMAIL]"
    )
    state = graph.get_state({"configurable": {"thread_id": "t1"}}).values
    assert state["text"] == MESSAGE and state["messages"][-1].content.startswith(f"order {CARD_AS_ORDER_ID}")


def test_a_jsonl_decision_log_holds_no_personal_data(tmp_path):
    log = JSONLDecisionLog(tmp_path / "decisions.jsonl")
    log.record(Decision(node="router", kind="route", input=MESSAGE, metadata={"order_id": int(CARD_AS_ORDER_ID)}))

    assert files_holding(tmp_path) == {}
    [decision] = log.decisions()
    assert decision.metadata == {"order_id": "[CARD_NUMBER]"} and "[IBAN]" in decision.input


def test_checkpoints_are_encrypted_with_a_key_file_only_the_owner_can_read(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_KEY_ENV, raising=False)
    graph = support_graph(
        tmp_path, GenericFakeChatModel(messages=iter([AIMessage("ok")])), SQLiteTraceStore(":memory:")
    )
    run_turn(graph, MESSAGE, thread_id="t1")

    key_file = tmp_path / "checkpoints.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    reopened = sqlite_checkpointer(tmp_path / "checkpoints.db")
    assert reopened.get_tuple({"configurable": {"thread_id": "t1"}}).checkpoint["channel_values"]["text"] == MESSAGE


def test_another_key_cannot_read_the_checkpoints_and_says_which_key_to_set(tmp_path):
    graph = support_graph(
        tmp_path, GenericFakeChatModel(messages=iter([AIMessage("ok")])), SQLiteTraceStore(":memory:")
    )
    run_turn(graph, MESSAGE, thread_id="t1")

    other = sqlite_checkpointer(tmp_path / "checkpoints.db", key=new_checkpoint_key())
    with pytest.raises(
        CheckpointDecryptionError, match=f"written with another one, or altered. Set {CHECKPOINT_KEY_ENV}"
    ):
        other.get_tuple({"configurable": {"thread_id": "t1"}})


def test_the_key_in_the_environment_wins_over_the_key_file(tmp_path, monkeypatch):
    key = new_checkpoint_key()
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, base64.urlsafe_b64encode(key).decode())
    graph = support_graph(
        tmp_path, GenericFakeChatModel(messages=iter([AIMessage("ok")])), SQLiteTraceStore(":memory:")
    )
    run_turn(graph, MESSAGE, thread_id="t1")

    assert not (tmp_path / "checkpoints.key").exists()
    monkeypatch.delenv(CHECKPOINT_KEY_ENV)
    assert sqlite_checkpointer(tmp_path / "checkpoints.db", key=key).get_tuple({"configurable": {"thread_id": "t1"}})


def test_a_malformed_key_in_the_environment_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match=f"{CHECKPOINT_KEY_ENV} must hold a 32-byte key in URL-safe base64"):
        sqlite_checkpointer(tmp_path / "checkpoints.db")


@pytest.mark.slow
def test_the_example_graph_stores_no_card_email_or_iban_in_any_of_its_files(embedded_slm, tmp_path):
    from agentgraph.graphs.customer_support import STATE_SCHEMAS, CustomerSupportParts, compose

    llm = GenericFakeChatModel(messages=iter([AIMessage(f"Sorry! We will refund {IBAN} and write to {EMAIL}.")]))
    parts = CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm, llm=llm)
    graph = compose(parts, checkpointer=sqlite_checkpointer(parts.checkpoints_path, *STATE_SCHEMAS))
    turns = [
        f"Where is my order 10001? My email is {EMAIL}",
        f"I want to cancel order {CARD_AS_ORDER_ID}",
        f"I want to file a complaint: you charged my card {CARD} twice, refund it to {IBAN}",
    ]

    for message in turns:
        run_turn(graph, message, thread_id="pii-1", callbacks=[parts.llm_call_recorder])

    assert files_holding(tmp_path) == {}
    decisions = b"".join(path.read_bytes() for path in tmp_path.glob("decisions.db*"))
    assert all(mask in decisions for mask in (b"[EMAIL]", b"[CARD_NUMBER]", b"[IBAN]")), "stored, masked"
    assert graph.get_state({"configurable": {"thread_id": "pii-1"}}).values["text"] == turns[-1]
