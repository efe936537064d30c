"""Langfuse tracing for graphs built from agentgraph nodes.

Langfuse's official LangChain callback handler traces every node, task, tool
and LLM call of a LangGraph run. :class:`DecisionTracingHandler` extends it by
one thing: when a node returns decision records (the ``decisions`` state key,
in a plain update or in a ``Command``), their route, confidence, strategy, escalation, outcome and idempotency keys
become that node's span metadata, so the trace answers "why did it go there?".
Session and user ids go in through the run's config metadata
(:func:`trace_metadata`), the way Langfuse reads them.

The handler is configured like any Langfuse client: ``LANGFUSE_PUBLIC_KEY``,
``LANGFUSE_SECRET_KEY`` and ``LANGFUSE_BASE_URL`` (or ``LANGFUSE_HOST``).

Example:
    >>> from agentgraph.tracing import DecisionTracingHandler, trace_metadata
    >>> handler = DecisionTracingHandler()                      # doctest: +SKIP
    >>> graph.invoke(inputs, {"callbacks": [handler],           # doctest: +SKIP
    ...     "metadata": trace_metadata(session_id="thread-1", user_id="C1001")})
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langfuse.langchain import CallbackHandler
from langgraph.types import Command

from agentgraph.records.decisions import Decision

TRACING_ENV = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")


def tracing_configured() -> bool:
    """Whether the environment holds Langfuse credentials."""
    return all(os.environ.get(name) for name in TRACING_ENV)


def trace_metadata(*, session_id: str | None = None, user_id: str | None = None) -> dict[str, str]:
    """Run-config metadata that sets the Langfuse session and user of a trace."""
    metadata = {"langfuse_session_id": session_id, "langfuse_user_id": user_id}
    return {key: value for key, value in metadata.items() if value is not None}


def decision_span_metadata(decisions: Sequence[Decision]) -> dict[str, Any]:
    """What a node's decisions add to its span: the last decision's verdict, and every idempotency key."""
    last = decisions[-1]
    metadata: dict[str, Any] = {
        "agentgraph_node": last.node,
        "decision_kind": last.kind,
        "strategy": last.strategy,
        "confidence": last.confidence,
        "escalated": any(d.escalated for d in decisions),
        "outcome": last.outcome,
        "model": last.model,
    }
    if last.kind == "route" and isinstance(last.output, dict):
        metadata |= {"route": last.output.get("route"), "intent": last.output.get("intent")}
    keys = [d.metadata["idempotency_key"] for d in decisions if d.metadata.get("idempotency_key")]
    if keys:
        metadata["idempotency_keys"] = keys
    return {key: value for key, value in metadata.items() if value is not None}


class DecisionTracingHandler(CallbackHandler):
    """Langfuse's LangChain handler, with each node's decision records as its span's metadata.

    Only a node's own run gets them: the graph's run returns the whole state, whose
    ``decisions`` hold every record of the thread (earlier turns too), not one node's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_runs: set[UUID] = set()

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        # LangGraph names a node's run after the node; runs inside the node inherit
        # ``langgraph_node`` under their own names, and the graph's run has none.
        if metadata and metadata.get("langgraph_node") == self.get_langchain_run_name(serialized, **kwargs):
            self._node_runs.add(run_id)
        return super().on_chain_start(
            serialized, inputs, run_id=run_id, parent_run_id=parent_run_id, tags=tags, metadata=metadata, **kwargs
        )

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> Any:
        if run_id in self._node_runs:
            self._node_runs.discard(run_id)
            decisions = node_decisions(outputs)
            # The handler keeps each open span under its run id until on_chain_end closes it.
            span = self._runs.get(run_id)
            if decisions and span is not None:
                span.update(metadata=decision_span_metadata(decisions))
        return super().on_chain_end(outputs, run_id=run_id, parent_run_id=parent_run_id, **kwargs)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        self._node_runs.discard(run_id)
        return super().on_chain_error(error, run_id=run_id, parent_run_id=parent_run_id, **kwargs)


def node_decisions(outputs: Any) -> list[Decision]:
    """The decision records in what a node returned: a state update, or a ``Command`` carrying one."""
    update = outputs.update if isinstance(outputs, Command) else outputs
    if isinstance(update, Mapping):
        decisions = update.get("decisions")
    elif isinstance(update, Sequence) and not isinstance(update, str):
        # A Command's update may be given as (key, value) pairs.
        decisions = next((value for key, value in update if key == "decisions"), None)
    else:
        return []
    if not isinstance(decisions, Sequence) or not all(isinstance(d, Decision) for d in decisions):
        return []
    return list(decisions)
