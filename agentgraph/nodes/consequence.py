"""The consequence modeler: every tool call is classified by what it would do to the world before it runs.

This module gathers the public names of its parts: the classes and how a call gets one
(:mod:`~agentgraph.nodes.consequence_classification`), the approval protocol
(:mod:`~agentgraph.nodes.approvals`), the guard that is ``ToolNode``'s ``wrap_tool_call``
(:mod:`~agentgraph.nodes.guarded_tools`), the guarded ``ToolNode``
(:mod:`~agentgraph.nodes.guarded_tool_node`) and a tool call made from an extracted object
(:mod:`~agentgraph.nodes.tool_calls`).

Five classes (:class:`Consequence`):

- ``safe``: read-only; runs directly, and runs again on a retry.
- ``retry_safe``: idempotent with a key; runs under an idempotency key and
  receives it (as the injected argument ``idempotency_key`` when the tool
  declares one) so its own write can refuse a second run.
- ``retry_unsafe``: changes something each time; runs at most once per key, a
  failure is recorded and returned to the loop flagged ``retry_blocked``, never
  retried automatically.
- ``irreversible``: waits for a person: ``interrupt()`` with an approval request
  (approve / edit / reject), then runs at most once per key. The request shows
  the customer's words and the call with every figure explicit; an edit may
  change only what :attr:`ConsequencePolicy.editable` lists (by default
  nothing), so never whose order or account it is; the reviewer is recorded.
- ``unknown``: the SLM was unsure (or the policy says so); the LLM gives a
  verdict, and with no usable verdict the call is treated as irreversible.

Sources, in order: MCP tool annotations, the :class:`ConsequencePolicy` table, the SLM, the LLM
(:func:`classify_tool_call`); annotations come from the tool's server and only ever raise caution
for a tool the policy lists.

Exactly once: a call that changes something reserves its key in the
:class:`~agentgraph.idempotency.IdempotencyStore` before it runs and records
the outcome after, so a node re-executed on an interrupt resume, a
``RetryPolicy`` retry or a restart returns the recorded outcome instead of
running again. A worker that dies between running and recording leaves the
key in flight: once its lease runs out a ``retry_safe`` call runs again with
the same key (its own write makes that a no-op), any other call returns a
flagged "outcome unknown" error for a person to check.

Example:
    >>> from langchain_core.messages import AIMessage
    >>> from langchain_core.tools import tool
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from langgraph.graph import START, MessagesState, StateGraph
    >>> from langgraph.types import Command
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore
    >>> from agentgraph.nodes.consequence import ConsequencePolicy, create_guarded_tool_node
    >>> @tool
    ... def cancel_order(order_id: str) -> str:
    ...     '''Cancel an order.'''
    ...     return f"order {order_id} cancelled"
    >>> store = SQLiteIdempotencyStore(":memory:")
    >>> node = create_guarded_tool_node(
    ...     [cancel_order], policy=ConsequencePolicy(tools={"cancel_order": "irreversible"}), idempotency_store=store
    ... )
    >>> builder = StateGraph(MessagesState)
    >>> _ = builder.add_node("tools", node).add_edge(START, "tools")
    >>> graph = builder.compile(checkpointer=InMemorySaver())
    >>> config = {"configurable": {"thread_id": "t1"}}
    >>> call = {"name": "cancel_order", "args": {"order_id": "A1"}, "id": "c1"}
    >>> paused = graph.invoke({"messages": [AIMessage("", tool_calls=[call])]}, config)
    >>> paused["__interrupt__"][0].value["action_requests"][0]["name"]
    'cancel_order'
    >>> paused["__interrupt__"][0].value["review_configs"][0]["allowed_decisions"]  # the policy lists nothing editable
    ['approve', 'reject']
    >>> approved = {"decisions": [{"type": "approve", "reviewer": "ops-anna"}]}
    >>> done = graph.invoke(Command(resume=approved), config)["messages"][-1]
    >>> done.content, store.get(done.response_metadata["idempotency_key"]).result["approval"]
    ('order A1 cancelled', {'decision': 'approve', 'reviewer': 'ops-anna'})
"""

from agentgraph.nodes.approvals import (
    REQUEST_CHARS,
    ApprovalAction,
    ApprovalRequest,
    ApproveDecision,
    EditDecision,
    HumanDecision,
    RejectDecision,
    ReviewConfig,
    ReviewedDecision,
)
from agentgraph.nodes.call_outcomes import DECISIONS_KEY, CallPlan
from agentgraph.nodes.consequence_classification import (
    CAUTION_ORDER,
    CONSEQUENCE_DESCRIPTIONS,
    HINT_FIELDS,
    Consequence,
    ConsequencePolicy,
    ConsequenceVerdict,
    calibrate,
    classify_tool_call,
    consequence_from_hints,
    content_free_prior,
    most_cautious,
    tool_hints,
)
from agentgraph.nodes.guarded_tool_node import GuardedToolNode, create_guarded_tool_node
from agentgraph.nodes.guarded_tools import ArgumentResolver, ConsequenceGuard
from agentgraph.nodes.tool_calls import IDEMPOTENCY_KEY_ARG, GuardedState, tool_call_from

__all__ = [
    "CAUTION_ORDER", "CONSEQUENCE_DESCRIPTIONS", "DECISIONS_KEY", "HINT_FIELDS", "IDEMPOTENCY_KEY_ARG", "REQUEST_CHARS",
    "ApprovalAction", "ApprovalRequest", "ApproveDecision", "ArgumentResolver", "CallPlan", "Consequence",
    "ConsequenceGuard", "ConsequencePolicy", "ConsequenceVerdict", "EditDecision", "GuardedState", "GuardedToolNode",
    "HumanDecision", "RejectDecision", "ReviewConfig", "ReviewedDecision", "calibrate", "classify_tool_call",
    "consequence_from_hints", "content_free_prior", "create_guarded_tool_node", "most_cautious", "tool_call_from",
    "tool_hints",
]  # fmt: skip
