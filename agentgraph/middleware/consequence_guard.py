"""The consequence guard as LangChain v1 middleware: each tool call runs only as its consequence class allows.

:class:`ConsequenceGuardMiddleware` gives the agent its tools and wraps every call to them with the
:class:`~agentgraph.nodes.consequence.ConsequenceGuard` (built from the tools and options given):
each call is classified (MCP annotations, the policy table, the SLM, the LLM), runs under an
idempotency key when it changes something, at most once per key (a redelivered call, a retry or a
resumed run gets the recorded outcome), and an ``irreversible`` one waits for a person:
``interrupt()`` with an approval request, resumed with ``Command(resume={"decisions": [...]})``.
An approval needs a checkpointer and a thread id, as every interrupt does.

The agent dispatches each tool call as a task of its own, and the guard plans each on its own (see
:mod:`~agentgraph.nodes.guarded_tools`). Calls to tools given to ``create_agent`` directly, not to the
guard, run unguarded: give the guard every tool that can change something. Each call's record goes
under ``decisions`` and to ``decision_log=``; with ``consent_key="write_consent"`` and the
:class:`~agentgraph.middleware.SLMRouterMiddleware` (``writes=``) a write runs only on a turn whose
request the customer asked for it.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from langchain_core.tools import tool
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from langgraph.types import Command
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore
    >>> from agentgraph.middleware import ConsequenceGuardMiddleware
    >>> from agentgraph.nodes.consequence import ConsequencePolicy
    >>> class ToolCallingModel(FakeMessagesListChatModel):
    ...     def bind_tools(self, tools, **kwargs):
    ...         return self
    >>> @tool
    ... def refund_order(order_id: str) -> str:
    ...     '''Refund an order.'''
    ...     return f"order {order_id} refunded"
    >>> call = {"name": "refund_order", "args": {"order_id": "A1"}, "id": "c1"}
    >>> llm = ToolCallingModel(responses=[AIMessage("", tool_calls=[call]), AIMessage("Done: refunded.")])
    >>> guard = ConsequenceGuardMiddleware([refund_order], idempotency_store=SQLiteIdempotencyStore(":memory:"),
    ...                                    policy=ConsequencePolicy(tools={"refund_order": "irreversible"}))
    >>> agent = create_agent(llm, middleware=[guard], checkpointer=InMemorySaver())
    >>> config = {"configurable": {"thread_id": "t1"}}
    >>> paused = agent.invoke({"messages": [("user", "Refund order A1")]}, config)
    >>> paused["__interrupt__"][0].value["action_requests"][0]["name"]
    'refund_order'
    >>> done = agent.invoke(Command(resume={"decisions": [{"type": "approve", "reviewer": "ops-anna"}]}), config)
    >>> done["messages"][-2].content, done["messages"][-1].content, done["decisions"][-1].outcome
    ('order A1 refunded', 'Done: refunded.', 'executed')
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from agentgraph.idempotency import IdempotencyStore
from agentgraph.nodes.consequence import ConsequenceGuard
from agentgraph.records.decisions import DecisionState


class ConsequenceGuardMiddleware(AgentMiddleware):
    """Adds ``tools`` to the agent and guards every call to them by its consequence class.

    Args:
        tools: the tools to guard; the agent gets them from the middleware (no need to list them
            in ``create_agent(tools=...)`` too).
        idempotency_store: where each key's outcome is kept (SQLite or Postgres, :mod:`agentgraph.idempotency`).
        **guard_options: the rest of :class:`~agentgraph.nodes.consequence.ConsequenceGuard`'s keywords
            (``policy``, ``slm``, ``llm``, ``decision_log``, ``key_for``, ``request_key``, ``consent_key``,
            ``resolve_arguments``, ``name``), documented by
            :func:`~agentgraph.nodes.consequence.create_guarded_tool_node`.
    """

    state_schema = DecisionState  # type: ignore[assignment]

    def __init__(self, tools: Sequence[BaseTool], *, idempotency_store: IdempotencyStore, **guard_options: Any) -> None:
        self.guard = ConsequenceGuard(tools, idempotency_store=idempotency_store, **guard_options)
        self.tools = list(self.guard.tools_by_name.values())

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolMessage | Command]
    ) -> ToolMessage | Command:
        if request.tool_call["name"] not in self.guard.tools_by_name:
            return handler(request)
        return self.guard.wrap_tool_call(request, handler)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command]]
    ) -> ToolMessage | Command:
        if request.tool_call["name"] not in self.guard.tools_by_name:
            return await handler(request)
        return await self.guard.awrap_tool_call(request, handler)
