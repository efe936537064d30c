"""The README's compose-your-own example runs as printed: routed, extracted, approved, written once."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.tools import tool
from langgraph.types import Command
from pydantic import BaseModel, Field

README = Path(__file__).resolve().parents[1] / "README.md"


def compose_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Compose your own graph", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_compose_example_stays_within_fifteen_lines():
    lines = [line for line in compose_block().splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith(("from ", "import "))]
    assert len(code) <= 15 and len(lines) <= 16, f"{len(code)} lines of code, {len(lines)} with the imports"
    assert "AIMessage" not in compose_block(), "no hand-made tool call"


@pytest.mark.slow
def test_the_compose_example_routes_extracts_asks_and_writes_once(embedded_slm, tmp_path, monkeypatch):
    cancelled: list[str] = []

    class CancelOrder(BaseModel):
        """A request to cancel one order."""

        order_id: str = Field(description="the order number", pattern=r"^[0-9]{5}$")

    @tool
    def cancel_order(order_id: str) -> str:
        """Cancel an order."""
        cancelled.append(order_id)
        return f"order {order_id} cancelled"

    monkeypatch.chdir(tmp_path)  # the example's idempotency store is a file in the working directory
    namespace = {"CancelOrder": CancelOrder, "cancel_order": cancel_order, "slm": embedded_slm, "llm": None}
    # dont_inherit: the block runs as a reader's script would, without this module's __future__ annotations.
    exec(compile(compose_block(), str(README), "exec", dont_inherit=True), namespace)
    graph = namespace["graph"]
    config = {"configurable": {"thread_id": "compose-1"}}

    paused = graph.invoke({"text": "please cancel order 48213"}, config)
    assert paused["route"] == "extract" and paused["extracted"] == CancelOrder(order_id="48213")
    request = paused["__interrupt__"][0].value["action_requests"][0]
    assert (request["name"], request["arguments"]) == ("cancel_order", {"order_id": "48213"})
    assert cancelled == [], "an irreversible call waits for the person"

    done = graph.invoke(Command(resume={"decisions": [{"type": "approve", "reviewer": "ops"}]}), config)
    assert done["messages"][-1].content == "order 48213 cancelled" and cancelled == ["48213"]
    again = graph.invoke({"text": "please cancel order 48213"}, config)
    assert cancelled == ["48213"], "the same call on the thread is answered from its record"
    assert again["messages"][-1].response_metadata.get("idempotency_key")
    escalated = graph.invoke({"text": "where is my parcel?"}, {"configurable": {"thread_id": "compose-2"}})
    assert escalated["route"] == "escalate" and escalated["escalation"].kind == "human_handoff"
