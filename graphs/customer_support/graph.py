"""The example graph's wiring: five paths from the router to one validated reply.

:func:`build_customer_support_graph` loads the parts (:mod:`~agentgraph.graphs.customer_support.parts`)
and :func:`compose` wires their nodes with the graph's own steps: :func:`plan_tool_call`
turns the intent and the extracted ticket into the tool call (never aimed at a guessed
order), :func:`tool_node_for` sends it to the read or the guarded tools, and
:func:`~agentgraph.graphs.customer_support.replies.answer` drafts the reply the output
validator checks. A multi-step message takes the planning path
(:mod:`~agentgraph.graphs.customer_support.planning`), whose steps run through the same nodes and
then, by :func:`answer_or_observe`, to the SLM evaluator instead of the reply.
:func:`make_graph` and :func:`make_checkpointer` serve it on LangGraph's Agent Server (``langgraph.json``).

Example:
    >>> from agentgraph.graphs.customer_support.graph import plan_tool_call
    >>> from agentgraph.graphs.customer_support.ticket import SupportTicket
    >>> planned = plan_tool_call({"intent": "track_order", "ticket": SupportTicket(order_id="10001")}, {})
    >>> call = planned["messages"][0].tool_calls[0]
    >>> call["name"], call["args"]
    ('get_order_status', {'customer_id': 'C1001', 'order_id': '10001'})
    >>> plan_tool_call({"intent": "cancel_order"}, {})["messages"][0].tool_calls[0]["name"]  # which order? ask
    'list_orders'
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agentgraph.checkpointing import async_postgres_checkpointer, state_serializer
from agentgraph.distill.registry import ModelRegistry
from agentgraph.errors import ConfigError
from agentgraph.graphs.customer_support.parts import CustomerSupportParts
from agentgraph.graphs.customer_support.planning import planning, step_node_for
from agentgraph.graphs.customer_support.replies import answer, deliver
from agentgraph.graphs.customer_support.routes import (
    CLARIFICATION_POLICY,
    ORDER_VERBS,
    READ_TOOLS,
    STEP_POLICY,
    TOOL_OF_INTENT,
)
from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER
from agentgraph.graphs.customer_support.state import STATE_SCHEMAS, CustomerSupportState
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.idempotency import IdempotencyStore
from agentgraph.modes import NodeModes
from agentgraph.nodes.context_pruner import Reranker
from agentgraph.nodes.loop import route_after_evaluate, route_after_plan
from agentgraph.nodes.router import route_of
from agentgraph.postgres import DATABASE_URL_ENV
from agentgraph.records.decisions import DecisionLog
from agentgraph.shadow import ShadowConfig
from agentgraph.slm import SLM
from agentgraph.tiers import LLMTiers


def build_customer_support_graph(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    slm: SLM | None = None,
    llm: BaseChatModel | None = None,
    extraction_llm: BaseChatModel | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    decision_log: DecisionLog | None = None,
    idempotency_store: IdempotencyStore | None = None,
    router_path: str | os.PathLike[str] | None = None,
    reranker: Reranker | None = None,
    candidates: int = 6,
    modes: NodeModes | None = None,
    shadow: ShadowConfig | None = None,
    database_url: str | None = None,
    registry: ModelRegistry | None = None,
    tiers: LLMTiers | None = None,
) -> CompiledStateGraph:
    """The compiled customer-support graph.

    Args:
        data_dir: where the store and the durable logs live (see :class:`CustomerSupportParts`).
        database_url: a PostgreSQL database (``postgresql://...``) for the idempotency keys, the trace
            store and decision log and, unless ``checkpointer`` is given, the checkpoints (encrypted with
            ``AGENTGRAPH_CHECKPOINT_KEY``), so that several workers can share them; the shop stays in
            ``data_dir``. Pass ``parts.turn_lock`` (``database_url=``) to ``run_turn`` to hold threads there.
        slm: the small model (default: :func:`agentgraph.slm.load_slm`, embedded unless AGENTGRAPH_SLM_URL is set).
        llm: the escalation LLM; None means escalations end in a human-handoff ticket.
        extraction_llm: the schema enforcer's fallback (``with_structured_output``); None hands
            an extraction the SLM could not make to a person.
        checkpointer: threads, resumes and pending approvals (default: in ``database_url`` when given, else
            in memory; pass a durable one, e.g. ``sqlite_checkpointer(path, *STATE_SCHEMAS)``, to resume
            across processes).
        decision_log, idempotency_store: defaults are SQLite files in ``data_dir``.
        router_path: a saved :class:`~agentgraph.classifier.IntentClassifier` (default: the trained example one).
        reranker: the context pruner's cross-encoder (default: the one trained from the customer-support data).
        candidates: policy sections retrieved for the pruner to rerank.
        modes: the mode of ``router`` and ``extract`` (default: ``AGENTGRAPH_MODES``, else :data:`DEFAULT_MODES`).
        shadow: the share of small-model answers the LLM checks too (default: ``AGENTGRAPH_SHADOW_RATE``).
        registry: where the promoted models are (default: ``models/`` in ``data_dir``).
        tiers: LLM tiers chosen per step type, instead of ``llm`` and ``extraction_llm`` (see
            :class:`~agentgraph.graphs.customer_support.parts.CustomerSupportParts`).
    """
    parts = CustomerSupportParts(
        data_dir=data_dir, slm=slm, llm=llm, extraction_llm=extraction_llm, decision_log=decision_log,
        idempotency_store=idempotency_store, router_path=router_path, reranker=reranker, modes=modes, shadow=shadow,
        database_url=database_url, registry=registry, tiers=tiers,
    )  # fmt: skip
    if checkpointer is None and database_url is not None:
        checkpointer = parts.durable_checkpointer()
    return compose(parts, checkpointer=checkpointer, candidates=candidates)


def compose(
    parts: CustomerSupportParts, *, checkpointer: BaseCheckpointSaver | None = None, candidates: int = 6
) -> CompiledStateGraph:
    """Wire the nodes over ``parts`` (several graphs, e.g. with different checkpointers, can share them)."""
    from langgraph.checkpoint.memory import InMemorySaver

    nodes = parts.nodes(candidates=candidates)
    builder = StateGraph(CustomerSupportState)
    builder.add_node("router", nodes["router"])
    builder.add_node("extract", nodes["extract"])
    builder.add_node("plan_tool_call", plan_tool_call)
    builder.add_node("read_tools", nodes["read_tools"])
    builder.add_node("guarded_tools", nodes["guarded_tools"])
    builder.add_node("retrieve", nodes["retrieve"])
    builder.add_node("prune", nodes["prune"])
    builder.add_node("escalate", nodes["escalate"])
    builder.add_node("answer", answer)
    builder.add_node("validate", nodes["validate"])
    builder.add_node("deliver", deliver)
    for name in ("begin_plan", "plan", "run_step", "observe_step", "evaluate", "summarize"):
        builder.add_node(name, nodes[name])
    builder.add_edge(START, "router")
    builder.add_conditional_edges(
        "router", route_of,
        {"lookup": "extract", "action": "extract", "knowledge": "retrieve", "escalate": "escalate",
         CLARIFICATION_POLICY.route: "answer", STEP_POLICY.route: "begin_plan"},
    )  # fmt: skip
    builder.add_edge("extract", "plan_tool_call")
    builder.add_conditional_edges(
        "plan_tool_call", tool_node_for, ["read_tools", "guarded_tools", "answer", "observe_step"]
    )
    for served in ("read_tools", "guarded_tools", "prune", "escalate"):
        builder.add_conditional_edges(served, answer_or_observe, ["answer", "observe_step"])
    builder.add_edge("retrieve", "prune")
    # The planning path: plan once, run each step through the nodes above, let the SLM judge each result.
    builder.add_edge("begin_plan", "plan")
    builder.add_conditional_edges("plan", route_after_plan, {"act": "run_step", "__end__": "summarize"})
    builder.add_conditional_edges("run_step", step_node_for, ["plan_tool_call", "retrieve", "escalate", "observe_step"])
    builder.add_edge("observe_step", "evaluate")
    builder.add_conditional_edges(
        "evaluate", route_after_evaluate, {"act": "run_step", "plan": "plan", "__end__": "summarize"}
    )
    builder.add_edge("summarize", "validate")
    builder.add_edge("answer", "validate")
    builder.add_edge("validate", "deliver")
    builder.add_edge("deliver", END)
    if checkpointer is None:
        checkpointer = InMemorySaver(serde=state_serializer(*STATE_SCHEMAS))
    return builder.compile(checkpointer=checkpointer, name="customer-support")


def plan_tool_call(state: CustomerSupportState, config: RunnableConfig) -> dict[str, Any]:
    """The tool call that serves the request, made from the intent and the extracted ticket.

    A tool is never aimed at a guessed order: without a usable order number
    (none given, or one the extractor could not read) the call is
    ``list_orders``, and the answer asks which order. An invoice number alone
    finds its invoice. A handed-off extraction means the request goes to a
    person (its ticket is in ``handoff``).
    """
    if state.get("handoff") is not None:
        return {"messages": []}
    ticket = state.get("ticket") or SupportTicket()
    customer = state.get("customer_id") or DEMO_CUSTOMER
    tool = TOOL_OF_INTENT[state["intent"]]
    arguments: dict[str, Any] = {"customer_id": customer}
    invoice_alone = tool == "get_invoice" and ticket.invoice_id is not None
    if tool in ORDER_VERBS and ticket.order_id is None and not invoice_alone:
        tool = "list_orders"
    elif tool != "delete_account":
        arguments["order_id"] = ticket.order_id
        if tool == "get_invoice":
            arguments["invoice_id"] = ticket.invoice_id
        if tool == "issue_refund":
            arguments["amount"] = ticket.refund_amount
    call = {"name": tool, "args": arguments, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
    return {"messages": [AIMessage("", tool_calls=[call])]}


def tool_node_for(state: CustomerSupportState) -> Literal["read_tools", "guarded_tools", "answer", "observe_step"]:
    last = state["messages"][-1] if state.get("messages") else None
    if state.get("handoff") is not None or not isinstance(last, AIMessage) or not last.tool_calls:
        return answer_or_observe(state)
    return "read_tools" if last.tool_calls[0]["name"] in READ_TOOLS else "guarded_tools"


def answer_or_observe(state: CustomerSupportState) -> Literal["answer", "observe_step"]:
    """After a path's work: the reply for a single request, the evaluator's observation for a plan's step."""
    return "observe_step" if planning(state) else "answer"


@cache
def _server_parts() -> CustomerSupportParts:
    return CustomerSupportParts(tiers=LLMTiers.from_env(), database_url=os.environ.get(DATABASE_URL_ENV) or None)


def make_graph(config: RunnableConfig | None = None) -> CompiledStateGraph:
    """For ``langgraph dev`` and LangGraph's Agent Server (``langgraph.json``): the graph with the default SLM
    and the LLM from the environment.

    The server calls this for every run, so the models and stores are loaded once per process;
    the server brings its own persistence (its PostgreSQL), so no checkpointer is set. With
    ``AGENTGRAPH_DATABASE_URL`` set, the idempotency keys and the trace store and decision log
    go to that PostgreSQL database, shared by every worker of the deployment (the server's own
    database will do); without it they are SQLite files in the data dir of each worker.
    """
    return compose(_server_parts()).builder.compile(name="customer-support")  # recompiled without a checkpointer


@asynccontextmanager
async def make_checkpointer() -> AsyncIterator[BaseCheckpointSaver]:
    """For an Agent Server that should keep threads the way agentgraph's own workers do (``langgraph.json``:
    ``"checkpointer": {"path": "./graphs/customer_support/graph.py:make_checkpointer"}``, the server's custom
    checkpointer): the threads in ``AGENTGRAPH_DATABASE_URL``, every channel value encrypted with
    ``AGENTGRAPH_CHECKPOINT_KEY`` (:func:`~agentgraph.checkpointing.async_postgres_checkpointer`), open for
    the server's lifetime."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise ConfigError(
            f"make_checkpointer keeps threads in the PostgreSQL database {DATABASE_URL_ENV} names: set it"
        )
    saver = await async_postgres_checkpointer(url, *STATE_SCHEMAS)
    try:
        yield saver
    finally:
        await saver.conn.close()
