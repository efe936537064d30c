"""The example graph's state, and the types it puts there.

:class:`CustomerSupportState` is the router's state (:class:`~agentgraph.nodes.router.RouterState`)
plus each path's keys: the extracted ticket, the tool messages, the retrieved and kept
policy sections, the draft and validated reply, the response. :data:`STATE_SCHEMAS` are
the graph's own pydantic types in it, which a checkpointer's serializer must be told
(:func:`~agentgraph.checkpointing.state_serializer`).

Example:
    >>> from agentgraph.graphs.customer_support.state import STATE_SCHEMAS, SupportReply
    >>> [schema.__name__ for schema in STATE_SCHEMAS]
    ['SupportTicket', 'SupportReply']
    >>> SupportReply(text="Order 10001 has shipped.").handoff_ticket is None
    True
"""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from pydantic import BaseModel

from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.llm import HumanHandoff
from agentgraph.nodes.context_pruner import KeptChunk
from agentgraph.nodes.loop import Observation, Status, Verdict
from agentgraph.nodes.output_validator import ValidationReport
from agentgraph.nodes.router import RouterState


class SupportReply(BaseModel):
    """What the graph sends the customer."""

    text: str
    handoff_ticket: str | None = None


STATE_SCHEMAS = (SupportTicket, SupportReply)
"""The graph's own types in state, for a checkpointer's serializer (see :mod:`agentgraph.checkpointing`)."""


class CustomerSupportState(RouterState, total=False):
    """The graph's state: the router's keys plus each path's."""

    customer_id: str
    ticket: SupportTicket | None
    handoff: HumanHandoff | None
    messages: Annotated[list[AnyMessage], add_messages]
    query: str
    chunks: list[dict[str, Any]]
    context: list[KeptChunk]
    draft: SupportReply
    reply: SupportReply | None
    validation: ValidationReport
    response: str
    # The planning path's keys (graphs/customer_support/planning.py): the loop engine's, one plan per turn.
    goal: str
    plan: list[str]
    step_index: int
    observations: list[Observation]
    verdict: Verdict | None
    status: Status
    answer: str | None
    iterations: int
    llm_calls: int
    slm_calls: int
    step_replies: list[str]
    plan_step_error: str | None
