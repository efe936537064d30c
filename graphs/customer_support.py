"""The example customer-support graph: all six control-layer nodes and the LLM, composed.

The router (the trained classifier, with its calibrated gate and out-of-scope
detector) sends each request down one of four paths:

- ``lookup`` (track an order or a refund, invoices, delivery times): the schema
  enforcer extracts order, invoice and amount; a read tool looks them up in
  the store; the answer is a template filled with what it found.
- ``action`` (cancel or change an order, change the delivery address, refund,
  delete the account): the schema enforcer, then the consequence modeler
  before the write tool runs. Cancellations and change requests are
  retry-safe under idempotency keys; refunds and account deletion wait for a
  person's approval (an ``interrupt``). A write never guesses its target: with
  no order number the customer is shown their recent orders and asked.
- ``knowledge`` (refund policy, payment methods, delivery options, fees,
  account how-tos): the store's policy documents (``graphs/policies``) are
  retrieved by embedding similarity and cut by the context pruner (a
  cross-encoder) to the section that answers.
- ``escalate`` (complaints, asking for a person, out of scope, low
  confidence): the LLM, or a human-handoff ticket when none is configured.

Every reply passes the output validator (schema, PII, length, no internal
leakage) before it leaves; a reply that still fails is held for a person.
By default the LLM is called only on the escalation path (and by the schema
enforcer when the SLM and its repair fail). Configuration switches the router
and the schema enforcer (nodes ``router`` and ``extract``) to teacher, auto or
student mode (:data:`DEFAULT_MODES`, :mod:`agentgraph.modes`) and turns on
shadow evaluation (:mod:`agentgraph.shadow`), without a change of code:
``AGENTGRAPH_MODES="router=teacher"``, ``AGENTGRAPH_SHADOW_RATE=0.05``, or the
``modes`` and ``shadow`` arguments.

Example:
    >>> import tempfile
    >>> from agentgraph.graphs.customer_support import build_customer_support_graph
    >>> from agentgraph.running import run_turn
    >>> graph = build_customer_support_graph(data_dir=tempfile.mkdtemp())
    >>> turn = run_turn(graph, "Where is my order 10001?", thread_id="doc-1")
    >>> turn.route, turn.llm_calls, "10001" in turn.response
    ('lookup', 0, True)
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from pydantic import BaseModel

from agentgraph.checkpointing import (
    async_postgres_checkpointer,
    postgres_checkpointer,
    sqlite_checkpointer,
    state_serializer,
)
from agentgraph.clarification import Clarification
from agentgraph.classifier import IntentClassifier, SentenceEncoder
from agentgraph.cross_encoder import (
    TRAINING_SEED,
    RelevancePair,
    TrainingSettings,
    cached_cross_encoder,
    support_relevance_pairs,
)
from agentgraph.datasets import SupportRequest, load_customer_support, split_customer_support
from agentgraph.records.decisions import DecisionLog
from agentgraph.records.traces import LLMCallRecorder, open_trace_store
from agentgraph.errors import ConfigError
from agentgraph.graphs.shop import DEMO_CUSTOMER, Shop
from agentgraph.graphs.support_router import (
    CLARIFICATION_POLICY,
    CUSTOMER_SUPPORT_INTENTS,
    support_act_detector,
    support_routing,
    support_router_path,
)
from agentgraph.idempotency import IdempotencyStore, open_idempotency_store
from agentgraph.llm import HumanHandoff, default_llm
from agentgraph.modes import Mode, NodeModes
from agentgraph.nodes.consequence import ConsequencePolicy, create_guarded_tool_node
from agentgraph.nodes.context_pruner import KeptChunk, Reranker, create_context_pruner
from agentgraph.nodes.output_validator import (
    ValidationReport,
    create_output_validator,
    length_check,
    pattern_check,
    pii_check,
    schema_check,
)
from agentgraph.nodes.router import (
    LLMStrategy,
    RouterState,
    create_escalation_node,
    create_router,
    route_of,
)
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.postgres import DATABASE_URL_ENV, is_postgres_url
from agentgraph.prompting import load_prompt
from agentgraph.shadow import ShadowConfig, ShadowEvaluator
from agentgraph.slm import SLM, load_slm
from agentgraph.slm.models import cache_dir
from agentgraph.support_schema import SupportTicket

TOOL_OF_INTENT: dict[str, str] = {
    "track_order": "get_order_status",
    "delivery_period": "get_order_status",
    "track_refund": "get_refund_status",
    "check_invoice": "get_invoice",
    "get_invoice": "get_invoice",
    "cancel_order": "cancel_order",
    "change_order": "request_order_change",
    "change_shipping_address": "request_address_change",
    "get_refund": "issue_refund",
    "delete_account": "delete_account",
}
READ_TOOLS = ("get_order_status", "list_orders", "get_invoice", "get_refund_status")

CONSEQUENCE_POLICY = ConsequencePolicy(
    tools={
        "cancel_order": "retry_safe",
        "request_order_change": "retry_safe",
        "request_address_change": "retry_safe",
        "issue_refund": "irreversible",
        "delete_account": "irreversible",
    },
    editable={"issue_refund": {"amount"}},
)
"""The operator's table for the write tools: the store's own annotations can only make a call more cautious.
A reviewer may change a refund's amount, never whose order or account a write is aimed at."""

ORDER_VERBS = {
    "get_order_status": "look up",
    "get_invoice": "find the invoice of",
    "get_refund_status": "check the refund of",
    "cancel_order": "cancel",
    "request_order_change": "change",
    "request_address_change": "send to a new address",
    "issue_refund": "refund",
}
"""The tools aimed at one order, and how the question that asks which order names their action."""

FORBIDDEN_IN_REPLIES = {
    "stack_trace": r"Traceback \(most recent call last\)",
    "sql": r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[^.]{0,80}\b(?:FROM|INTO|SET)\b",
    "internal_path": r"(?:/usr/|/home/|site-packages|\.py\b)",
}
"""What must never reach a customer: internals a failing tool or model could leak."""


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


@dataclass(frozen=True)
class PolicySection:
    """One ``##`` section of a policy document: the unit retrieval returns."""

    document: str
    title: str
    text: str


def load_policy_sections(folder: Path | None = None) -> list[PolicySection]:
    """The store's policy documents (``graphs/policies/*.md``), one entry per ``##`` section."""
    sources = sorted(Path(folder).glob("*.md")) if folder else sorted(
        (entry for entry in files("agentgraph.graphs").joinpath("policies").iterdir() if entry.name.endswith(".md")),
        key=lambda entry: entry.name,
    )  # fmt: skip
    sections = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        document = re.search(r"^# (.+)$", text, re.MULTILINE)[1]
        for title, body in re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL):
            sections.append(PolicySection(document=document, title=title.strip(), text=" ".join(body.split())))
    return sections


DEFAULT_MODES: dict[str, Mode] = {"router": "student", "extract": "auto"}
"""The nodes with modes, and each one's mode unless configured: the router escalates what its classifier
cannot route (the LLM answers those requests, it does not route them); the schema enforcer asks the LLM
when the SLM and its repair fail."""

LLM_STEP_TYPES = {"escalate": "escalate", "extract": "extract", "guarded_tools": "classify_tool"}
"""What the LLM does in each node that may call it: the step type its recorded calls are distilled as."""

POLICY_SECTION_OF_INTENT: dict[str, str] = {
    "check_refund_policy": "Refund policy",
    "check_payment_methods": "Payment methods",
    "delivery_options": "Delivery options",
    "check_cancellation_fee": "Cancellation fees",
    "place_order": "Placing an order",
    "payment_issue": "Payment problems",
    "create_account": "Creating an account",
    "edit_account": "Editing your account",
    "switch_account": "Account plans",
    "recover_password": "Forgotten password",
    "registration_problems": "Registration problems",
    "newsletter_subscription": "Newsletter",
    "set_up_shipping_address": "Shipping addresses",
    "review": "Reviews and feedback",
    "contact_customer_service": "Contacting customer service",
}
"""The policy section written to answer each knowledge intent."""


def policy_relevance_pairs(
    rows: Sequence[SupportRequest],
    sections: Sequence[PolicySection],
    *,
    per_intent: int = 40,
    negatives_per_query: int = 3,
    seed: int = TRAINING_SEED,
) -> list[RelevancePair]:
    """Requests of the knowledge intents against the store's own policy sections.

    For up to ``per_intent`` requests of each intent in
    :data:`POLICY_SECTION_OF_INTENT` (sampled with ``seed``): the section
    written for it is relevant; ``negatives_per_query`` other sections are not,
    the first from the same document, where sections are hardest to tell apart
    ("Payment methods" against "Payment problems").
    """
    by_title = {section.title: section for section in sections}
    rng = random.Random(seed)
    pairs: list[RelevancePair] = []
    for intent, title in POLICY_SECTION_OF_INTENT.items():
        answer = by_title[title]
        same_document = [s for s in sections if s.document == answer.document and s is not answer]
        elsewhere = [s for s in sections if s.document != answer.document]
        requests = [row for row in rows if row.intent == intent]
        for request in rng.sample(requests, min(per_intent, len(requests))):
            negatives = rng.sample(same_document, min(1, len(same_document)))
            negatives += rng.sample(elsewhere, negatives_per_query - len(negatives))
            pairs.append(RelevancePair(query=request.text, passage=answer.text, label=1.0))
            pairs += [RelevancePair(query=request.text, passage=s.text, label=0.0) for s in negatives]
    return pairs


def support_reranker_folder(*, settings: TrainingSettings | None = None) -> Path:
    """The context pruner's cross-encoder, trained on first use and cached (:func:`cached_cross_encoder`).

    Trained on the fixed-seed train split only (the test split stays held out
    for the benchmarks): 1,200 requests against reference responses (relevant:
    one of the same intent; three of other intents are not) and up to 600
    requests against the policy sections (:func:`policy_relevance_pairs`), so
    it ranks the passages this graph retrieves, not only Bitext's. A reranker
    trained on the responses alone put "Payment problems" above "Payment
    methods" for "which payment methods can I use?".
    """
    train = split_customer_support(load_customer_support())["train"]
    pairs = support_relevance_pairs(train, max_queries=1200, negatives_per_query=3)
    pairs += policy_relevance_pairs(train, load_policy_sections())
    return cached_cross_encoder("customer-support", pairs, settings=settings)


class PolicyRetriever:
    """Policy sections by embedding similarity (all-MiniLM-L6-v2): the candidates the context pruner reranks."""

    def __init__(self, sections: list[PolicySection], encoder: SentenceEncoder) -> None:
        self.sections = sections
        self.encoder = encoder
        self._embeddings = encoder.encode([f"{s.title}. {s.text}" for s in sections])

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        similarity = self._embeddings @ self.encoder.encode_one(query)
        best = np.argsort(-similarity)[:k]
        return [
            {"text": self.sections[i].text, "title": self.sections[i].title, "document": self.sections[i].document,
             "similarity": float(similarity[i])}
            for i in best
        ]  # fmt: skip


class CustomerSupportParts:
    """What the graph is made of, loaded once: the models, the store and the durable stores.

    Everything durable lives in ``data_dir`` (default ``cache_dir()/customer-support``):
    ``shop.db`` (the store), ``idempotency.db``, ``decisions.db`` (a
    :class:`~agentgraph.records.traces.SQLiteTraceStore`: the nodes' decisions and the
    LLM's calls, the training data of tomorrow; pass ``llm_call_recorder`` in a run's
    callbacks to record the calls) and ``checkpoints.db`` (threads and pending approvals).
    With ``database_url`` (``postgresql://...``), the idempotency keys, the trace store and
    decision log and the checkpoints (:meth:`durable_checkpointer`) live in that PostgreSQL
    database instead, so several workers, on several machines, can share them; turns then hold
    their thread with an advisory lock there (:attr:`turn_lock`). The shop, the example's own
    store, stays ``shop.db`` in ``data_dir``.
    ``llm`` answers escalations and is the router's teacher (``with_structured_output``) in
    teacher and auto mode and for shadow evaluation; ``extraction_llm`` (often the same model;
    it must support ``with_structured_output``) is the schema enforcer's fallback after the
    SLM and its repair, and its teacher. ``modes`` sets the mode of ``router`` and ``extract``
    (default: ``AGENTGRAPH_MODES``, else :data:`DEFAULT_MODES`); ``shadow`` the share of
    small-model answers the teacher checks (default: ``AGENTGRAPH_SHADOW_RATE``, else none),
    its calls recorded in the trace store. A teacher mode without its LLM hands requests to a person.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        slm: SLM | None = None,
        llm: BaseChatModel | None = None,
        extraction_llm: BaseChatModel | None = None,
        decision_log: DecisionLog | None = None,
        idempotency_store: IdempotencyStore | None = None,
        router_path: str | os.PathLike[str] | None = None,
        reranker: Reranker | None = None,
        modes: NodeModes | None = None,
        shadow: ShadowConfig | None = None,
        database_url: str | None = None,
    ) -> None:
        if database_url is not None and not is_postgres_url(database_url):
            raise ConfigError(f"database_url must be a postgresql:// URL, not {database_url!r}")
        self.database_url = database_url
        self.modes = (modes if modes is not None else NodeModes.from_env()).check_nodes(DEFAULT_MODES)
        shadow = shadow if shadow is not None else ShadowConfig.from_env()
        self.data_dir = Path(data_dir) if data_dir is not None else cache_dir() / "customer-support"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.slm = slm if slm is not None else load_slm()
        self.llm = llm
        self.extraction_llm = extraction_llm
        self.shop = Shop(self.data_dir / "shop.db")
        self.trace_store = open_trace_store(database_url or self.data_dir / "decisions.db", decision_log=decision_log)
        self.decision_log: DecisionLog = self.trace_store
        self.llm_call_recorder = LLMCallRecorder(self.trace_store, step_types=LLM_STEP_TYPES)
        self.shadow = ShadowEvaluator(shadow, callbacks=[self.llm_call_recorder]) if shadow.rate > 0 else None
        self.idempotency_store = idempotency_store or open_idempotency_store(database_url or self.data_dir / "idempotency.db")
        self.classifier = IntentClassifier.load(router_path or support_router_path())
        self.acts = support_act_detector(self.classifier.encoder)
        self.reranker = reranker or Reranker(support_reranker_folder())

    @cached_property
    def retriever(self) -> PolicyRetriever:
        return PolicyRetriever(load_policy_sections(), self.classifier.encoder)

    def mode_of(self, node: str) -> Mode:
        return self.modes.mode_of(node, default=DEFAULT_MODES[node])

    def close(self) -> None:
        """Finish the shadow comparisons under way (their teacher calls run in the background)."""
        if self.shadow is not None:
            self.shadow.close()

    @property
    def checkpoints_path(self) -> Path:
        """Where a durable checkpointer for this data dir keeps threads (see :func:`sqlite_checkpointer`)."""
        return self.data_dir / "checkpoints.db"

    def durable_checkpointer(self) -> BaseCheckpointSaver:
        """A new checkpointer on this graph's durable threads: in ``database_url``
        (:func:`~agentgraph.checkpointing.postgres_checkpointer`, its key from ``AGENTGRAPH_CHECKPOINT_KEY``),
        else ``checkpoints.db`` in ``data_dir``. Close its ``conn`` when done."""
        if self.database_url is not None:
            return postgres_checkpointer(self.database_url, *STATE_SCHEMAS)
        return sqlite_checkpointer(self.checkpoints_path, *STATE_SCHEMAS)

    @property
    def turn_lock(self) -> dict[str, Any]:
        """How a turn holds its thread against other processes (:func:`~agentgraph.running.run_turn`'s
        ``lock_dir`` or ``database_url``): an advisory lock in ``database_url``, else lock files in ``data_dir``."""
        if self.database_url is not None:
            return {"database_url": self.database_url}
        return {"lock_dir": self.data_dir / "locks"}


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
    """
    parts = CustomerSupportParts(
        data_dir=data_dir, slm=slm, llm=llm, extraction_llm=extraction_llm, decision_log=decision_log,
        idempotency_store=idempotency_store, router_path=router_path, reranker=reranker, modes=modes, shadow=shadow,
        database_url=database_url,
    )  # fmt: skip
    if checkpointer is None and database_url is not None:
        checkpointer = parts.durable_checkpointer()
    return compose(parts, checkpointer=checkpointer, candidates=candidates)


def compose(
    parts: CustomerSupportParts, *, checkpointer: BaseCheckpointSaver | None = None, candidates: int = 6
) -> CompiledStateGraph:
    """Wire the nodes over ``parts`` (several graphs, e.g. with different checkpointers, can share them)."""
    from langgraph.checkpoint.memory import InMemorySaver

    log = parts.decision_log
    tools = {tool.name: tool for tool in parts.shop.tools()}
    router = create_router(
        **support_routing(parts.classifier, parts.acts), goto=False, decision_log=log,
        mode=parts.mode_of("router"), shadow=parts.shadow,
        teacher=LLMStrategy(parts.llm, CUSTOMER_SUPPORT_INTENTS) if parts.llm is not None else None,
    )  # fmt: skip
    extract = create_schema_enforcer(
        parts.slm, SupportTicket, llm=parts.extraction_llm, decision_log=log, input_key="request", output_key="ticket",
        mode=parts.mode_of("extract"), shadow=parts.shadow,
    )  # fmt: skip
    read_tools = ToolNode([tools[name] for name in READ_TOOLS])
    guarded_tools = create_guarded_tool_node(
        [tool for name, tool in tools.items() if name not in READ_TOOLS],
        idempotency_store=parts.idempotency_store,
        policy=CONSEQUENCE_POLICY,
        slm=parts.slm,
        llm=parts.llm,
        decision_log=log,
        request_key="request",
        consent_key="write_consent",
        resolve_arguments=parts.shop.explicit_arguments(),
    )
    escalate = create_escalation_node(
        parts.llm, input_key="request", system=load_prompt("support_escalation").render(), decision_log=log
    )
    prune = create_context_pruner(parts.reranker, top_k=1, token_budget=400, decision_log=log)
    validate = create_output_validator(
        [schema_check(SupportReply), pii_check(), length_check(min_chars=1, max_chars=1500),
         pattern_check(FORBIDDEN_IN_REPLIES)],
        decision_log=log, input_key="draft", output_key="reply",
    )  # fmt: skip

    def retrieve(state: CustomerSupportState) -> dict[str, Any]:
        return {"query": state["request"], "chunks": parts.retriever.search(state["request"], candidates)}

    builder = StateGraph(CustomerSupportState)
    builder.add_node("router", router)
    builder.add_node("extract", extract)
    builder.add_node("plan_tool_call", plan_tool_call)
    builder.add_node("read_tools", read_tools)
    builder.add_node("guarded_tools", guarded_tools)
    builder.add_node("retrieve", retrieve)
    builder.add_node("prune", prune)
    builder.add_node("escalate", escalate)
    builder.add_node("answer", answer)
    builder.add_node("validate", validate)
    builder.add_node("deliver", deliver)
    builder.add_edge(START, "router")
    builder.add_conditional_edges(
        "router", route_of,
        {"lookup": "extract", "action": "extract", "knowledge": "retrieve", "escalate": "escalate",
         CLARIFICATION_POLICY.route: "answer"},
    )  # fmt: skip
    builder.add_edge("extract", "plan_tool_call")
    builder.add_conditional_edges("plan_tool_call", tool_node_for, ["read_tools", "guarded_tools", "answer"])
    builder.add_edge("read_tools", "answer")
    builder.add_edge("guarded_tools", "answer")
    builder.add_edge("retrieve", "prune")
    builder.add_edge("prune", "answer")
    builder.add_edge("escalate", "answer")
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


def tool_node_for(state: CustomerSupportState) -> Literal["read_tools", "guarded_tools", "answer"]:
    last = state["messages"][-1] if state.get("messages") else None
    if state.get("handoff") is not None or not isinstance(last, AIMessage) or not last.tool_calls:
        return "answer"
    return "read_tools" if last.tool_calls[0]["name"] in READ_TOOLS else "guarded_tools"


def answer(state: CustomerSupportState) -> dict[str, Any]:
    """The reply, by path: the router's question, a template over the tool's result, the policy section kept,
    or the escalation. A reply that asks which order is kept as the thread's pending question."""
    route = state["route"]
    if route == CLARIFICATION_POLICY.route:
        return {"draft": SupportReply(text=state["clarification"].question)}
    if route == "escalate":
        result = state["escalation"]
        if isinstance(result, HumanHandoff):
            return {"draft": handoff_reply(result)}
        return {"draft": SupportReply(text=result.text)}
    if route == "knowledge":
        kept = state.get("context") or []
        if not kept:
            return {"draft": SupportReply(text="I could not find that in our policies; a colleague will follow up.")}
        return {"draft": SupportReply(text=kept[0].text)}
    if state.get("handoff") is not None:
        return {"draft": handoff_reply(state["handoff"])}
    message = state["messages"][-1]
    reply = SupportReply(text=tool_reply(message, state["intent"]))
    if message.name == "list_orders" and message.status != "error":
        which = Clarification(
            kind="reference", question=reply.text, candidates=[state["intent"]], request=state["request"],
            consent=state.get("write_consent") is not None,
        )  # fmt: skip
        return {"draft": reply, "clarification": which}
    return {"draft": reply}


def handoff_reply(handoff: HumanHandoff) -> SupportReply:
    return SupportReply(
        text=f"I have passed your request to a colleague, who will get back to you. Your ticket is {handoff.ticket_id}.",
        handoff_ticket=handoff.ticket_id,
    )


def tool_reply(message: ToolMessage, intent: str) -> str:
    """A customer-facing sentence from a tool's result (JSON) or its error."""
    if message.status == "error":
        return error_reply(message)
    result = json.loads(message.content)
    match message.name:
        case "get_order_status":
            return order_status_reply(result)
        case "list_orders":
            verb = ORDER_VERBS[TOOL_OF_INTENT[intent]]
            if not result:
                return "I could not find any orders on your account."
            listed = "; ".join(f"{o['id']} ({o['status']}, placed {o['placed_on']}, {o['total']:.2f} EUR)" for o in result)
            return f"Which order should I {verb}? Your recent orders: {listed}. Reply with its order number."
        case "get_invoice":
            return (f"Invoice #{result['id']} for order {result['order_id']} was issued on {result['issued_on']}: "
                    f"{result['amount']:.2f} EUR, {result['status']}. A PDF copy is under Account, Orders, Invoice.")  # fmt: skip
        case "get_refund_status":
            return (f"Your refund of {result['amount']:.2f} EUR for order {result['order_id']}, requested on "
                    f"{result['requested_on']}, is {result['status']}.")  # fmt: skip
        case "cancel_order":
            return (f"Order {result['order_id']} is cancelled. The full amount goes back to your payment method "
                    "within 5 business days.")  # fmt: skip
        case "request_order_change" | "request_address_change":
            what = "change its items" if result["kind"] == "order" else "enter the new delivery address"
            return f"Order {result['order_id']} is on hold, and we have e-mailed you a link to {what}."
        case "issue_refund":
            return (f"A refund of {result['amount']:.2f} EUR for order {result['order_id']} is approved. It reaches "
                    "your payment method within 5 business days.")  # fmt: skip
        case "delete_account":
            return "Your account is deleted. Invoices are kept for 10 years, as the law requires."
    raise ValueError(f"no reply template for tool {message.name!r}")


def order_status_reply(order: Mapping[str, Any]) -> str:
    where = {
        "processing": f"is being prepared and should arrive by {order['estimated_delivery']}",
        "shipped": f"has shipped with {order['carrier']} and should arrive by {order['estimated_delivery']}",
        "delivered": f"was delivered to {order['shipping_city']}",
        "cancelled": "was cancelled",
    }[order["status"]]
    return f"Order {order['id']} ({order['items']}) {where}."


def error_reply(message: ToolMessage) -> str:
    flags = message.response_metadata or {}
    if flags.get("error") == "rejected":
        return "Our team reviewed this request and did not approve it, so nothing was changed."
    if flags.get("error") == "not_requested":
        return "I have not changed anything, as your message did not ask me to. Tell me what you would like me to do."
    if flags.get("retry_blocked"):
        return ("I could not confirm that this went through, so I have not repeated it; a colleague will check. "
                "You do not need to ask again.")
    reason = message.content.removeprefix("Error: ").split("\n")[0]
    return f"Sorry, I could not do that: {reason}."


def deliver(state: CustomerSupportState) -> dict[str, Any]:
    """The validated reply, or, when validation flagged it, a holding message (the draft waits for a person)."""
    reply = state.get("reply")
    if reply is None:
        return {"response": "Thanks for your message. A colleague is reviewing the answer and will reply shortly."}
    return {"response": reply.text}


@cache
def _server_parts() -> CustomerSupportParts:
    llm = default_llm()
    return CustomerSupportParts(llm=llm, extraction_llm=llm, database_url=os.environ.get(DATABASE_URL_ENV) or None)


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
    ``"checkpointer": {"path": "./graphs/customer_support.py:make_checkpointer"}``, the server's custom
    checkpointer): the threads in ``AGENTGRAPH_DATABASE_URL``, every channel value encrypted with
    ``AGENTGRAPH_CHECKPOINT_KEY`` (:func:`~agentgraph.checkpointing.async_postgres_checkpointer`), open for
    the server's lifetime."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise ConfigError(f"make_checkpointer keeps threads in the PostgreSQL database {DATABASE_URL_ENV} names: set it")
    saver = await async_postgres_checkpointer(url, *STATE_SCHEMAS)
    try:
        yield saver
    finally:
        await saver.conn.close()
