"""The guarded tool node: LangGraph's ``ToolNode``, each call run only as its consequence class allows.

:class:`GuardedToolNode` is a ``ToolNode`` whose ``wrap_tool_call`` / ``awrap_tool_call`` are a
:class:`~agentgraph.nodes.guarded_tools.ConsequenceGuard`'s. Before ToolNode runs anything, the node
has the guard plan every call of the last AI message together (classes, keys, consent, and one
``interrupt()`` for all approvals); ToolNode then runs the calls as it always does, in parallel (or
natively async under ``ainvoke``), injecting ``InjectedState``, ``InjectedStore`` and
``ToolRuntime`` arguments and taking tools that return a ``Command``, and the hook settles each
call by its plan.

Example:
    >>> import asyncio
    >>> from typing import Annotated
    >>> from langchain_core.messages import AIMessage
    >>> from langchain_core.tools import tool
    >>> from langgraph.graph import START, StateGraph
    >>> from langgraph.prebuilt import InjectedState
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore
    >>> from agentgraph.nodes.consequence import ConsequencePolicy, GuardedState
    >>> @tool
    ... def count_messages(state: Annotated[dict, InjectedState]) -> str:
    ...     '''Count the messages so far.'''
    ...     return str(len(state["messages"]))
    >>> @tool
    ... def add_note(text: str) -> str:
    ...     '''Add a note to the ticket.'''
    ...     return f"noted: {text}"
    >>> node = create_guarded_tool_node(
    ...     [count_messages, add_note],
    ...     policy=ConsequencePolicy(tools={"count_messages": "safe", "add_note": "retry_unsafe"}),
    ...     idempotency_store=SQLiteIdempotencyStore(":memory:"),
    ... )
    >>> isinstance(node, ToolNode)
    True
    >>> graph = StateGraph(GuardedState).add_node("tools", node).add_edge(START, "tools").compile()
    >>> calls = [{"name": "count_messages", "args": {}, "id": "c1"}, {"name": "add_note", "args": {"text": "hi"}, "id": "c2"}]
    >>> done = asyncio.run(graph.ainvoke({"messages": [AIMessage("", tool_calls=calls)]}, {"configurable": {"thread_id": "t1"}}))
    >>> [m.content for m in done["messages"][1:]], [(d.output, d.outcome) for d in done["decisions"]]
    (['1', 'noted: hi'], [('safe', 'executed'), ('retry_unsafe', 'executed')])
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime

from agentgraph.errors import NoToolCallsError
from agentgraph.idempotency import IdempotencyStore
from agentgraph.nodes.call_outcomes import DECISIONS_KEY, CallPlan
from agentgraph.nodes.consequence_classification import ConsequencePolicy
from agentgraph.nodes.guarded_tools import ArgumentResolver, ConsequenceGuard
from agentgraph.nodes.tool_calls import state_value
from agentgraph.records.decisions import DecisionLog

if TYPE_CHECKING:
    from agentgraph.slm import SLM


class GuardedToolNode(ToolNode):
    """A ``ToolNode`` whose calls ``guard`` plans together before any runs, and settles one by one as they run.

    Its update is ToolNode's with the calls' decision records under ``decisions``, in call order:
    ``{messages_key: [...], "decisions": [...]}``, or, when a tool returned a ``Command``, ToolNode's
    list of updates with ``{"decisions": [...]}`` last. A node given a bare message list returns
    ToolNode's message list; its records are in the decision log only.
    """

    def __init__(self, guard: ConsequenceGuard) -> None:
        super().__init__(
            list(guard.tools_by_name.values()),
            name=guard.name,
            messages_key=guard.messages_key,
            wrap_tool_call=guard.wrap_tool_call,
            awrap_tool_call=guard.awrap_tool_call,
        )
        self.guard = guard

    def _func(self, input: Any, config: RunnableConfig, runtime: Runtime) -> Any:
        calls, state = self._calls_and_state(input, config)
        plans = self.guard.plan(calls, state, config)
        with self.guard.planned(plans):
            try:
                output = super()._func(input, config, runtime)
            finally:  # ToolNode's executor lets every call finish first; the records go in call order
                self.guard.log(plans)
        return self._with_decisions(output, plans, input)

    async def _afunc(self, input: Any, config: RunnableConfig, runtime: Runtime) -> Any:
        calls, state = self._calls_and_state(input, config)
        plans = await self.guard.aplan(calls, state, config)
        with self.guard.planned(plans) as settling:
            try:
                output = await super()._afunc(input, config, runtime)
            finally:  # a fault ends ToolNode's gather early: the calls still running finish, and are logged, first
                if running := [task for task in settling if not task.done()]:
                    await asyncio.wait(running)
                await asyncio.to_thread(self.guard.log, plans)
        return self._with_decisions(output, plans, input)

    def _calls_and_state(self, input: Any, config: RunnableConfig) -> tuple[list[ToolCall], Any]:
        """The calls to plan and the state they are planned against (a ``Send`` payload carries no state:
        ToolNode reads the graph's)."""
        if isinstance(input, dict) and input.get("__type") == "tool_call_with_context":
            return [input["tool_call"]], self._extract_state(input, config)
        if isinstance(input, list) and input and isinstance(input[-1], dict) and input[-1].get("type") == "tool_call":
            return list(input), self._extract_state(input, config)
        messages = input if isinstance(input, list) else state_value(input, self._messages_key)
        last_ai = next((m for m in reversed(messages or []) if isinstance(m, AIMessage)), None)
        if last_ai is None or not last_ai.tool_calls:
            raise NoToolCallsError(
                f"no AI message with tool calls under state key {self._messages_key!r}: the node runs after a "
                "model's tool calls (resuming a thread with no pending approval, e.g. an unknown thread id, also "
                "ends here)"
            )
        return list(last_ai.tool_calls), input

    @staticmethod
    def _with_decisions(output: Any, plans: Sequence[CallPlan], input: Any) -> Any:
        decisions = [plan.decision for plan in plans]
        if isinstance(output, dict):
            return {**output, DECISIONS_KEY: decisions}
        if isinstance(input, list) and not (input and isinstance(input[-1], dict)):
            return output  # a bare message list: no state to keep the records in
        return [*output, {DECISIONS_KEY: decisions}]


def create_guarded_tool_node(
    tools: Sequence[BaseTool | Callable[..., Any]],
    *,
    idempotency_store: IdempotencyStore,
    policy: ConsequencePolicy | None = None,
    slm: SLM | None = None,
    llm: BaseChatModel | None = None,
    decision_log: DecisionLog | None = None,
    key_for: Callable[[ToolCall, str | None], str] | None = None,
    request_key: str | None = None,
    consent_key: str | None = None,
    resolve_arguments: Mapping[str, ArgumentResolver] | None = None,
    messages_key: str = "messages",
    name: str = "guarded_tools",
) -> GuardedToolNode:
    """A ``ToolNode`` that classifies each call of the last AI message and runs it as its class allows.

    Args:
        tools: the tools the model may call (plain functions are wrapped with ``@tool``). They may
            take ``InjectedState``, ``InjectedStore`` and ``ToolRuntime`` arguments and return a
            ``Command``, as under any ``ToolNode``.
        idempotency_store: where keys of calls that change something are reserved and recorded.
        policy: the operator's class table, SLM confidence threshold and the arguments a person may edit.
        slm: classifies undeclared tools; without one they go to the LLM.
        llm: the verdict on unknown calls; without one they need a person's approval.
        decision_log: also receives every call's :class:`~agentgraph.records.decisions.Decision`.
        key_for: the idempotency key of a call, from the call and the thread id; by default
            derived from thread, tool and arguments (so the same call in the same thread runs
            once within the store's retention window). ``lambda call, thread: call["id"]`` keys
            by tool-call id instead.
        request_key: the state key holding the customer's request; an approval request quotes it
            (cut to :data:`~agentgraph.nodes.approvals.REQUEST_CHARS`), so a person sees what was
            asked next to what would run.
        consent_key: the state key holding the customer's consent to a write this turn (the router's
            :class:`~agentgraph.write_safety.WriteConsent`); when given, a call that is not ``safe``
            runs only while that value is truthy, and is otherwise answered with an error flagged
            ``not_requested``. Read-only calls never need it.
        resolve_arguments: per tool name, a read that returns a call's arguments as the tool will
            run them, every value the tool would otherwise work out itself made explicit (a refund
            of "everything left" becomes its amount), or raises a ``ToolException`` when the call
            cannot run. It gets the arguments as the tool's schema parses them, before a person is
            asked and again on an edit, so a person approves the figures that run; a call it
            refuses is answered with its error, unasked.
        messages_key: the state key holding the messages; ToolMessages are appended to it.
        name: the node's name, in the graph and in decision records.

    Returns a :class:`GuardedToolNode`. Its update is ``{messages_key: [ToolMessage, ...],
    "decisions": [Decision, ...]}``, one of each per call, in call order (see the class for tools
    that return a ``Command``); a decision's ``outcome`` is ``executed``, ``recovered`` (run
    again with its key after a dead worker's lease ran out), ``replayed``, ``failed`` (recorded,
    never retried), ``outcome_unknown``, ``rejected``, ``not_requested``, ``unknown_tool`` or
    ``invalid_arguments`` (the schema, a NaN or infinity, or ``resolve_arguments`` refused them).

    The node plans every call before any runs, and ToolNode then runs them in parallel. A call
    that needs approval pauses the whole node with one ``interrupt()`` for all such calls, before
    any call runs; resume with ``Command(resume={"decisions": [...]})``, one decision per requested
    action, each ``{"type": "approve"}``, ``{"type": "edit", "edited_action": {"name": ...,
    "arguments": {...}}}`` or ``{"type": "reject", "message": ...}``, each with an optional
    ``"reviewer"`` (who decided, kept in the decision record and the key's record). An edit may
    change only the arguments ``policy.editable`` lists for the tool (``review_configs`` shows
    them), to values the tool's schema accepts. A resume value that does not fit asks again, with
    the error under ``"error"``, and uses nothing up. The outcome, a rejection included, is
    recorded under the key of the call as the model made it, so a redelivered call is answered
    from the record and not put to a person again; a tool's ``Command`` is recorded as its
    message, so a replay answers with the message and leaves the rest of the update, applied when
    the call ran, alone.

    Classifications and resolutions run as LangGraph tasks, so with a checkpointer a resumed node
    reuses them instead of asking the models (or the tool) again. A ``safe`` or ``retry_safe``
    tool's exception propagates (after a ``retry_safe`` key is released) for the graph's
    ``RetryPolicy``; so does :class:`~agentgraph.errors.IdempotencyConflictError` (a duplicate in
    flight). Calls that change something need a thread id in the config unless ``key_for`` is given.
    A policy or ``resolve_arguments`` naming arguments or tools the node lacks raises
    :class:`~agentgraph.errors.ConfigError`.
    """
    guard = ConsequenceGuard(
        tools, idempotency_store=idempotency_store, policy=policy, slm=slm, llm=llm, decision_log=decision_log,
        key_for=key_for, request_key=request_key, consent_key=consent_key, resolve_arguments=resolve_arguments,
        messages_key=messages_key, name=name,
    )  # fmt: skip
    return GuardedToolNode(guard)
