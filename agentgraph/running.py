"""Run one turn of a graph built from agentgraph nodes and report what happened.

:func:`run_turn` streams a compiled graph (a new message, or the answer to a
pending approval) and returns a :class:`TurnResult`: the route and its
confidence, the nodes visited in order, how many frontier-LLM calls and
small-model decisions the turn took, the response, a pending approval (the
``interrupt`` payload) and the latency. The CLI prints it; the benchmarks
aggregate it.

Example:
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from langgraph.graph import START, StateGraph
    >>> from agentgraph.running import run_turn
    >>> from typing import TypedDict
    >>> class State(TypedDict, total=False):
    ...     text: str
    ...     response: str
    >>> builder = StateGraph(State)
    >>> _ = builder.add_node("echo", lambda state: {"response": state["text"].upper()}).add_edge(START, "echo")
    >>> turn = run_turn(builder.compile(checkpointer=InMemorySaver()), "hello", thread_id="t1")
    >>> turn.nodes, turn.response, turn.llm_calls
    (['echo'], 'HELLO', 0)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from pydantic import BaseModel, Field

from agentgraph.decisions import Decision

SMALL_MODEL_STRATEGIES = frozenset({"classifier", "slm", "slm_repair", "cross_encoder"})
"""Decision strategies that mean a local small model (SLM, classifier or cross-encoder) decided."""


class LLMCallCounter(BaseCallbackHandler):
    """Counts chat-model and LLM starts: every frontier-LLM call a graph run makes, wherever in the graph."""

    def __init__(self) -> None:
        self.calls = 0

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.calls += 1

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        self.calls += 1


class TurnResult(BaseModel):
    """What one turn did (the CLI's ``--json`` output)."""

    thread_id: str
    route: str | None = None
    intent: str | None = None
    confidence: float | None = None
    nodes: list[str] = Field(description="nodes that ran this turn, in order")
    llm_calls: int = Field(description="frontier-LLM calls this turn")
    slm_calls: int = Field(description="decisions a local small model made this turn (SLM, classifier, cross-encoder)")
    response: str | None = Field(description="the reply; None while an approval is pending")
    interrupt: dict[str, Any] | None = Field(description="the pending approval request, if the turn paused for one")
    latency_ms: float
    decisions: list[Decision] = Field(default_factory=list, exclude=True)


def run_turn(
    graph: CompiledStateGraph,
    message: str | None = None,
    *,
    resume: Any = None,
    thread_id: str | None = None,
    customer_id: str | None = None,
    callbacks: list[BaseCallbackHandler] | None = None,
    metadata: dict[str, Any] | None = None,
) -> TurnResult:
    """Send ``message`` (or, with ``resume``, answer the pending interrupt) on ``thread_id`` and report.

    The graph needs a checkpointer for ``resume`` and for a thread to carry over turns.
    ``callbacks`` (a Langfuse handler, say) and ``metadata`` go into the run's config.
    """
    if (message is None) == (resume is None):
        raise ValueError("give a message or a resume value, not both or neither")
    thread_id = thread_id or uuid.uuid4().hex
    counter = LLMCallCounter()
    config = {
        "configurable": {"thread_id": thread_id},
        "callbacks": [counter, *(callbacks or [])],
        "metadata": metadata or {},
    }
    if resume is not None:
        graph_input: Any = Command(resume=resume)
    else:
        graph_input = {"text": message, **({"customer_id": customer_id} if customer_id else {})}
    started = time.perf_counter()
    nodes: list[str] = []
    decisions: list[Decision] = []
    pending: dict[str, Any] | None = None
    for update in graph.stream(graph_input, config, stream_mode="updates"):
        for node, values in update.items():
            if node == "__interrupt__":
                pending = {"id": values[0].id, **values[0].value}
                continue
            nodes.append(node)
            decisions.extend((values or {}).get("decisions", []) if isinstance(values, dict) else [])
    latency_ms = (time.perf_counter() - started) * 1000
    state = graph.get_state(config).values
    return TurnResult(
        thread_id=thread_id,
        route=state.get("route"),
        intent=state.get("intent"),
        confidence=state.get("route_confidence"),
        nodes=nodes,
        llm_calls=counter.calls,
        slm_calls=sum(decision.strategy in SMALL_MODEL_STRATEGIES for decision in decisions),
        response=None if pending else state.get("response"),
        interrupt=pending,
        latency_ms=latency_ms,
        decisions=decisions,
    )
