"""The consequence guard: a ``wrap_tool_call`` hook that runs each tool call only as its consequence class allows.

:class:`ConsequenceGuard` plans a call (refusal, class, idempotency key, the customer's consent, a
person's approval) and then settles it: runs it through the ``execute`` it is handed, at most once
per key, or answers it from the key's record. Its ``wrap_tool_call`` / ``awrap_tool_call`` have the
signatures of ``ToolNode``'s hooks and of LangChain v1's ``AgentMiddleware.wrap_tool_call``; they
read the state from ``request.state`` and the config from ``request.runtime``. Used so, the guard
plans each call on its own and returns ``Command(update={messages_key: [message], "decisions":
[record]})``. :func:`~agentgraph.nodes.guarded_tool_node.create_guarded_tool_node` plans all calls
of a message together first (one ``interrupt()`` for all approvals, before any call runs): give a
plain ``ToolNode`` the hooks only where each task runs one call, as ``create_agent`` dispatches them,
since LangGraph numbers interrupts and tasks by the order they are reached, and parallel calls reach
them in any order.

Example:
    >>> from langchain_core.messages import AIMessage
    >>> from langchain_core.tools import tool
    >>> from langgraph.graph import START, StateGraph
    >>> from langgraph.prebuilt import ToolNode
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore
    >>> from agentgraph.nodes.consequence import ConsequencePolicy, GuardedState
    >>> @tool
    ... def add_note(text: str) -> str:
    ...     '''Add a note to the ticket.'''
    ...     return f"noted: {text}"
    >>> store = SQLiteIdempotencyStore(":memory:")
    >>> guard = ConsequenceGuard(
    ...     [add_note], policy=ConsequencePolicy(tools={"add_note": "retry_unsafe"}), idempotency_store=store
    ... )
    >>> node = ToolNode([add_note], wrap_tool_call=guard.wrap_tool_call, awrap_tool_call=guard.awrap_tool_call)
    >>> graph = StateGraph(GuardedState).add_node("tools", node).add_edge(START, "tools").compile()
    >>> call = AIMessage("", tool_calls=[{"name": "add_note", "args": {"text": "called back"}, "id": "c1"}])
    >>> config = {"configurable": {"thread_id": "t1"}}
    >>> first, again = graph.invoke({"messages": [call]}, config), graph.invoke({"messages": [call]}, config)
    >>> first["messages"][-1].content, [d.outcome for turn in (first, again) for d in turn["decisions"]]
    ('noted: called back', ['executed', 'replayed'])
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools import tool as as_tool
from langgraph.errors import GraphBubbleUp
from langgraph.func import task
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from agentgraph.errors import ConfigError, MissingThreadIdError, ToolCallIdError
from agentgraph.idempotency import IdempotencyStore, derive_idempotency_key
from agentgraph.nodes.approvals import ApprovalRequest, approval_request, ask_for_decisions, review_config
from agentgraph.nodes.call_outcomes import (
    CallPlan,
    Settled,
    call_decision,
    error_message,
    failed_call,
    not_requested,
    open_call,
    ran_call,
    refusal,
    with_decision,
)
from agentgraph.nodes.consequence_classification import (
    Consequence,
    ConsequencePolicy,
    ConsequenceVerdict,
    classify_tool_call,
)
from agentgraph.nodes.tool_calls import parsed_arguments, state_value, with_idempotency_key
from agentgraph.prompting import load_prompt
from agentgraph.records.decisions import DecisionLog, log_decision, thread_id_of

if TYPE_CHECKING:
    from agentgraph.slm import SLM

ArgumentResolver = Callable[[dict[str, Any]], dict[str, Any]]
"""A read that returns a call's arguments as the tool will run them, or raises a ``ToolException`` (see
:func:`~agentgraph.nodes.guarded_tool_node.create_guarded_tool_node`)."""

Execute = Callable[[ToolCallRequest], ToolMessage | Command]
AsyncExecute = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command]]
_ToolStep = Callable[[str, dict[str, Any]], Future[dict[str, Any]]]
"""A LangGraph task over a tool name and its call's arguments (classification, resolution)."""


# The calls a guarded tool node planned together, for its hooks to settle, and the async tasks settling them:
# ToolNode runs the hooks in threads (copies of this context) or tasks of their own, so they travel with it.
# The plans are keyed by call id, which ToolCall types as optional (plan() refuses calls without one).
_PLANNED: contextvars.ContextVar[tuple[ConsequenceGuard, Mapping[str | None, CallPlan], set[asyncio.Task]] | None] = (
    contextvars.ContextVar("agentgraph_guarded_plans", default=None)
)


# Planning waits on LangGraph tasks, which an async graph runs on the event loop's default executor: planning on
# that executor too could take all its workers and wait for itself, so it has threads of its own.
_PLANNING = ThreadPoolExecutor(thread_name_prefix="agentgraph-guard-planning")


class ConsequenceGuard:
    """Plans and settles tool calls by their consequence class (see the module docstring).

    The arguments are those of :func:`~agentgraph.nodes.guarded_tool_node.create_guarded_tool_node`,
    which documents them. :meth:`wrap_tool_call` and :meth:`awrap_tool_call` are the hooks. A node
    that runs several calls at once plans them together first, as
    :class:`~agentgraph.nodes.guarded_tool_node.GuardedToolNode` does: :meth:`plan` (or
    :meth:`aplan`), then the calls run inside :meth:`planned`, then :meth:`log` writes their records.
    """

    def __init__(
        self,
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
    ) -> None:
        self.tools_by_name = {t.name: t for t in (t if isinstance(t, BaseTool) else as_tool(t) for t in tools)}
        self.idempotency_store, self.policy = idempotency_store, policy or ConsequencePolicy()
        self.slm, self.llm, self.decision_log, self.key_for = slm, llm, decision_log, key_for
        self.request_key, self.consent_key, self.messages_key, self.name = request_key, consent_key, messages_key, name
        self.policy.check_editable(self.tools_by_name)
        self.resolvers = dict(resolve_arguments or {})
        if unknown := set(self.resolvers) - set(self.tools_by_name):
            raise ConfigError(f"resolve_arguments names {sorted(unknown)}, not tools of this node; drop them")
        self._prompt_id = load_prompt("consequence").id
        # LangGraph tasks: with a checkpointer, a resumed node reuses them instead of asking again. The ignores:
        # task(name=...) binds its type variables before it is given the function, so mypy infers Never for them.
        self._classify: _ToolStep = task(name=f"{name}:classify")(self._classification)  # type: ignore[arg-type,assignment]
        self._resolve: _ToolStep = task(name=f"{name}:resolve")(self._resolution)  # type: ignore[arg-type,assignment]

    def wrap_tool_call(self, request: ToolCallRequest, execute: Execute) -> ToolMessage | Command:
        """``ToolNode(wrap_tool_call=...)``: settle the call as planned by the node, or plan it alone first."""
        if (plan := self._planned(request)[0]) is not None:
            return self._settle(plan, request, execute)
        (plan,) = self.plan([request.tool_call], request.state, request.runtime.config)
        try:
            result = self._settle(plan, request, execute)
        finally:
            self.log([plan])
        return with_decision(result, plan.planned_decision, request.state, self.messages_key)

    async def awrap_tool_call(self, request: ToolCallRequest, execute: AsyncExecute) -> ToolMessage | Command:
        """``ToolNode(awrap_tool_call=...)``: as :meth:`wrap_tool_call`, with the store and the models off the loop."""
        plan, settling = self._planned(request)
        if plan is not None:
            current = asyncio.current_task()
            assert current is not None  # a coroutine awaited by the event loop runs in a task
            settling.add(current)
            return await self._asettle(plan, request, execute)
        (plan,) = await self.aplan([request.tool_call], request.state, request.runtime.config)
        try:
            result = await self._asettle(plan, request, execute)
        finally:
            await asyncio.to_thread(self.log, [plan])
        return with_decision(result, plan.planned_decision, request.state, self.messages_key)

    def plan(self, calls: Sequence[ToolCall], state: Any, config: RunnableConfig) -> list[CallPlan]:
        """Decide every call before any runs: refusals, classes, keys, consent, and one ``interrupt()`` for
        the calls a person must approve (their decisions kept on the plans)."""
        if len({call.get("id") for call in calls} - {None, ""}) != len(calls):
            raise ToolCallIdError(
                f"tool calls {[c.get('id') for c in calls]} lack ids or share one: give each call an id of its own"
            )
        thread_id = thread_id_of(config)
        plans = [CallPlan(call, thread_id=thread_id, refusal=refusal(call, self.tools_by_name)) for call in calls]
        classifying = [(p, self._classify(p.call["name"], p.call["args"])) for p in plans if p.refusal is None]
        for plan, verdict in classifying:
            plan.verdict = ConsequenceVerdict.model_validate(verdict.result())
        consented = self.consent_key is None or bool(state_value(state, self.consent_key))
        for plan in plans:  # a call not refused is classified
            if plan.verdict is not None and plan.verdict.consequence is not Consequence.SAFE:
                if consented:
                    plan.key = self._key_of(plan.call, thread_id)
                else:
                    plan.refusal = not_requested(plan.call, plan.verdict.consequence)
        request = state_value(state, self.request_key) if self.request_key is not None else None
        self._ask_approvals(self._pending_approvals(plans, request))
        for plan in plans:  # drafted in call order, so the log (by time) keeps that order however calls finish
            plan.decision = call_decision(self.name, plan, self._prompt_id)
        return plans

    async def aplan(self, calls: Sequence[ToolCall], state: Any, config: RunnableConfig) -> list[CallPlan]:
        """:meth:`plan` for an async graph, on a planning thread (the graph's context, and so its config, with it)."""
        run_in_context = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(
            _PLANNING, run_in_context, self.plan, calls, state, config
        )

    @contextmanager
    def planned(self, plans: Sequence[CallPlan]) -> Iterator[set[asyncio.Task]]:
        """Within this block, the hooks settle these plans' calls instead of planning them one by one; yields
        the tasks :meth:`awrap_tool_call` settles them in, for a node to wait for when one call's fault ends
        ToolNode's ``gather`` while others still run."""
        settling: set[asyncio.Task] = set()
        token = _PLANNED.set((self, {plan.call["id"]: plan for plan in plans}, settling))
        try:
            yield settling
        finally:
            _PLANNED.reset(token)

    def log(self, plans: Sequence[CallPlan]) -> None:
        """Write the decision records of the settled (or faulted) plans to the decision log, in their order."""
        for plan in plans:
            if plan.decision is not None and plan.decision.outcome is not None:
                log_decision(self.decision_log, plan.decision)

    def _planned(self, request: ToolCallRequest) -> tuple[CallPlan | None, set[asyncio.Task]]:
        """The node's plan of the request's call (None: plan it alone), and the tasks settling the node's calls."""
        planned = _PLANNED.get()
        if planned is None or planned[0] is not self:
            return None, set()
        return planned[1].get(request.tool_call["id"]), planned[2]

    def _classification(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        verdict = classify_tool_call(
            self.tools_by_name[tool_name], arguments, policy=self.policy, slm=self.slm, llm=self.llm
        )
        return verdict.model_dump(mode="json")

    def _resolution(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"arguments": self.resolvers[tool_name](parsed_arguments(self.tools_by_name[tool_name], arguments))}
        except ToolException as exc:
            return {"error": str(exc)}

    def _explicit(self, tool_name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """``arguments`` as the tool will run them and None, or the tool's reason they cannot run."""
        if tool_name not in self.resolvers:
            return arguments, None
        resolved = self._resolve(tool_name, arguments).result()
        return resolved.get("arguments", arguments), resolved.get("error")

    def _key_of(self, call: ToolCall, thread_id: str | None) -> str:
        if self.key_for is not None:
            return self.key_for(call, thread_id)
        if thread_id is None:
            raise MissingThreadIdError(
                f"{self.name} derives idempotency keys from the thread id: invoke the graph with "
                "config={'configurable': {'thread_id': ...}}, or pass key_for="
            )
        return derive_idempotency_key(thread_id, call["name"], call["args"])

    def _pending_approvals(
        self, plans: Sequence[CallPlan], request: str | None
    ) -> list[tuple[CallPlan, ApprovalRequest]]:
        """The plans a person must decide, with what each is asked: irreversible calls whose key has no
        record, their figures explicit.

        A key with any record (settled, or in flight) was put to a person before: no second approval.
        """
        pending = []
        for plan in plans:
            verdict = plan.verdict
            if plan.key is None or verdict is None or verdict.consequence is not Consequence.IRREVERSIBLE:
                continue  # refused (not requested, say), or no approval needed
            if self.idempotency_store.get(plan.key) is not None:
                continue
            arguments, error = self._explicit(plan.call["name"], plan.call["args"])
            plan.arguments = arguments
            if error is not None:
                plan.refusal = error_message(plan.call, f"Error: {error}", error="invalid_arguments")
            else:
                tool = self.tools_by_name[plan.call["name"]]
                action = approval_request(
                    tool, arguments, tool_call_id=plan.call["id"], reason=verdict.reason, request=request
                )
                pending.append((plan, action))
        return pending

    def _ask_approvals(self, pending: Sequence[tuple[CallPlan, ApprovalRequest]]) -> None:
        if not pending:
            return
        actions = [action for _, action in pending]
        reviews = [review_config(self.tools_by_name[plan.call["name"]], self.policy) for plan, _ in pending]
        decisions = ask_for_decisions(actions, reviews, self.tools_by_name, self._explicit)
        for (plan, _), decision in zip(pending, decisions, strict=True):
            plan.approval = decision

    def _settle(self, plan: CallPlan, request: ToolCallRequest, execute: Execute) -> ToolMessage | Command:
        """Run or answer ``plan``'s call, at most once per key; its decision record is kept on the plan."""
        with self._recording(plan) as record:
            opened = open_call(plan, self.idempotency_store)
            if isinstance(opened, Settled):
                return record(opened)
            try:
                result = execute(self._to_run(plan, request))
            except Exception as exc:
                return record(failed_call(plan, self.idempotency_store, opened, exc))
            return record(ran_call(plan, self.idempotency_store, opened, result, self.messages_key))

    async def _asettle(self, plan: CallPlan, request: ToolCallRequest, execute: AsyncExecute) -> ToolMessage | Command:
        """:meth:`_settle` for ``awrap_tool_call``: the store's reads and writes run on a worker thread."""
        with self._recording(plan) as record:
            opened = await asyncio.to_thread(open_call, plan, self.idempotency_store)
            if isinstance(opened, Settled):
                return record(opened)
            try:
                result = await execute(self._to_run(plan, request))
            except Exception as exc:
                return record(await asyncio.to_thread(failed_call, plan, self.idempotency_store, opened, exc))
            return record(
                await asyncio.to_thread(ran_call, plan, self.idempotency_store, opened, result, self.messages_key)
            )

    @contextmanager
    def _recording(self, plan: CallPlan) -> Iterator[Callable[[Settled], ToolMessage | Command]]:
        """Give ``plan``'s decision record the outcome it is settled with, or the fault that stopped it."""
        decision = plan.planned_decision

        def record(settled: Settled) -> ToolMessage | Command:
            plan.decision = decision.model_copy(update={"outcome": settled.outcome})
            return settled.result

        try:
            yield record
        except GraphBubbleUp:  # an interrupt inside the tool: it runs again when the graph resumes
            raise
        except Exception as exc:
            plan.decision = decision.model_copy(update={"outcome": f"error: {type(exc).__name__}: {exc}"})
            raise

    def _to_run(self, plan: CallPlan, request: ToolCallRequest) -> ToolCallRequest:
        """The request ``execute`` runs: the call as approved, its key injected where the tool declares one."""
        tool = request.tool if request.tool is not None else self.tools_by_name[plan.call["name"]]
        if plan.key is not None:
            tool = with_idempotency_key(tool, plan.key)
        return request.override(tool_call={**plan.call, "args": plan.arguments_run}, tool=tool)
