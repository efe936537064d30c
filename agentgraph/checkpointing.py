"""Checkpointers that know agentgraph's state types.

LangGraph's serializer restores pydantic objects from a checkpoint only for
modules it was told to trust (it warns today and will refuse later). The nodes
put their records in state (decisions, handoffs, validation reports, kept
chunks, loop observations), and your own schemas join them: :func:`state_serializer`
allows exactly those types, and :func:`sqlite_checkpointer` is a durable
``SqliteSaver`` that uses it, so threads and pending approvals survive a restart.

Example:
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from agentgraph.checkpointing import state_serializer
    >>> from agentgraph.support_schema import SupportTicket
    >>> saver = InMemorySaver(serde=state_serializer(SupportTicket))
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from agentgraph.decisions import Decision
from agentgraph.llm import HumanHandoff
from agentgraph.nodes.context_pruner import KeptChunk
from agentgraph.nodes.loop import ActResult, Observation
from agentgraph.nodes.output_validator import Span, ValidationReport, ValidationStep, Violation

NODE_STATE_TYPES: tuple[type, ...] = (
    Decision, HumanHandoff, KeptChunk, ActResult, Observation, ValidationReport, ValidationStep, Violation, Span,
)  # fmt: skip
"""Every type an agentgraph node writes into graph state."""


def state_serializer(*schemas: type) -> JsonPlusSerializer:
    """A serializer that restores the nodes' state types and ``schemas`` (your pydantic models in state)."""
    return JsonPlusSerializer(
        allowed_msgpack_modules=[(t.__module__, t.__qualname__) for t in (*NODE_STATE_TYPES, *schemas)]
    )


def sqlite_checkpointer(path: str | Path, *schemas: type) -> SqliteSaver:
    """A durable checkpointer in the SQLite file ``path`` (created with its folder) that restores ``schemas``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False)
    return SqliteSaver(connection, serde=state_serializer(*schemas))
