"""The consequence modeler: every tool call is classified by what it would do to the world before it runs.

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

Sources, in order: MCP tool annotations (``readOnlyHint``, ``destructiveHint``,
``idempotentHint``, ``openWorldHint``), read from ``tool.metadata`` where
langchain-mcp-adapters puts them (flat) or under ``metadata["annotations"]``;
the :class:`ConsequencePolicy` table; the SLM for tools neither declares.
Annotations come from the tool's server and are untrusted: for a tool in the
policy table they can only make a call more cautious, never less. A tool the
table does not list is classified by its annotations alone, so list every tool
of a server you do not trust.

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

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools import tool as as_tool
from langgraph.func import task
from langgraph.types import interrupt
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agentgraph.records.decisions import Decision, DecisionLog, log_decision, thread_id_of
from agentgraph.errors import (
    ApprovalResponseError,
    ConfigError,
    IdempotencyConflictError,
    IdempotencyOutcomeUnknownError,
    MissingThreadIdError,
    NoToolCallsError,
    SLMError,
)
from agentgraph.idempotency import (
    IdempotencyRecord,
    IdempotencyStore,
    canonical_json,
    derive_idempotency_key,
    request_fingerprint,
)
from agentgraph.llm import escalate
from agentgraph.prompting import load_prompt, render_prompt
from agentgraph.text import clean_text, truncate_to_tokens

if TYPE_CHECKING:
    from agentgraph.slm import SLM


IDEMPOTENCY_KEY_ARG = "idempotency_key"
"""A tool that declares this argument as ``Annotated[str, InjectedToolArg]`` receives the call's key."""

HINT_FIELDS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")

# Room left in the SLM's context for the label list and the chosen label.
_LABEL_LIST_TOKENS = 256


class Consequence(StrEnum):
    """What running a tool call would do to the world (see the module docstring)."""

    SAFE = "safe"
    RETRY_SAFE = "retry_safe"
    RETRY_UNSAFE = "retry_unsafe"
    IRREVERSIBLE = "irreversible"
    UNKNOWN = "unknown"


CAUTION_ORDER = (Consequence.SAFE, Consequence.RETRY_SAFE, Consequence.RETRY_UNSAFE, Consequence.IRREVERSIBLE)
"""The final classes, least cautious first."""

CONSEQUENCE_DESCRIPTIONS = {
    Consequence.SAFE.value: "only reads or computes; changes nothing anywhere",
    Consequence.RETRY_SAFE.value: "changes something, but repeating the same call changes nothing more",
    Consequence.RETRY_UNSAFE.value: "changes something each time it runs, such as a charge, a message or a new record",
    Consequence.IRREVERSIBLE.value: "deletes, pays out, or does something else that cannot be undone",
}
"""What each final class means, as the SLM and the LLM are shown it."""

_LABEL_PATTERN = re.compile(r"\b(" + "|".join(CONSEQUENCE_DESCRIPTIONS) + r")\b")


def most_cautious(*classes: Consequence | None) -> Consequence:
    """The most cautious of the final classes given (None and ``unknown`` are ignored)."""
    ranked = [c for c in classes if c in CAUTION_ORDER]
    if not ranked:
        raise ValueError("need at least one final class")
    return max(ranked, key=CAUTION_ORDER.index)


class ConsequencePolicy(BaseModel):
    """The operator's table of tool classes, and how sure the SLM must be.

    ``tools`` maps a tool name, or an ``fnmatch`` pattern such as ``"delete_*"``,
    to a class; an exact name wins over patterns, patterns are tried in order.
    Mapping a tool to ``unknown`` sends its calls straight to the LLM. ``editable`` lists, per
    tool, what a person may change when they edit a call put to them for approval.
    """

    tools: dict[str, Consequence] = Field(default_factory=dict)
    confidence_threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="below this SLM probability the call is unknown and goes to the LLM"
    )
    editable: dict[str, frozenset[str]] = Field(
        default_factory=dict,
        description="per tool name, the arguments a person may change when they edit a call for approval "
        "(within the bounds of the tool's schema); nothing else is editable, so an edit can fix an amount, "
        "never redirect the call to another customer's order or account",
    )

    def lookup(self, tool_name: str) -> Consequence | None:
        if tool_name in self.tools:
            return self.tools[tool_name]
        return next((c for pattern, c in self.tools.items() if fnmatch.fnmatchcase(tool_name, pattern)), None)

    def editable_arguments(self, tool_name: str) -> frozenset[str]:
        """What an edit of a ``tool_name`` call may change (an exact name; by default nothing)."""
        return self.editable.get(tool_name, frozenset())


def tool_hints(tool: BaseTool) -> dict[str, bool]:
    """The MCP annotations a tool declares: flat in ``tool.metadata`` or under ``metadata["annotations"]``."""
    metadata = tool.metadata or {}
    sources = (metadata.get("annotations") or {}, metadata)
    return {field: source[field] for source in sources for field in HINT_FIELDS if isinstance(source.get(field), bool)}


def consequence_from_hints(hints: Mapping[str, bool]) -> Consequence | None:
    """The class MCP annotations imply, with the MCP defaults for hints left out; None without hints.

    ``openWorldHint`` does not change the class: an open-world write is judged
    by the same destructive and idempotent hints.
    """
    if not hints:
        return None
    if hints.get("readOnlyHint", False):
        return Consequence.SAFE
    if hints.get("destructiveHint", True):
        return Consequence.IRREVERSIBLE
    return Consequence.RETRY_SAFE if hints.get("idempotentHint", False) else Consequence.RETRY_UNSAFE


class ConsequenceVerdict(BaseModel):
    """How one tool call was classified, and why."""

    consequence: Consequence = Field(description="a final class, never unknown")
    strategy: Literal["policy", "annotations", "slm", "llm", "fallback"]
    reason: str
    confidence: float | None = Field(
        default=None, description="the SLM's calibrated probability of its class; None for declared classes"
    )
    probabilities: dict[str, float] | None = Field(default=None, description="the SLM's, after calibration")
    hints: dict[str, bool] = Field(default_factory=dict)
    escalated: bool = False
    model: str | None = None
    latency_ms: float = 0.0


def classify_tool_call(
    tool: BaseTool,
    arguments: Mapping[str, Any],
    *,
    policy: ConsequencePolicy,
    slm: SLM | None = None,
    llm: BaseChatModel | None = None,
) -> ConsequenceVerdict:
    """Classify a call of ``tool`` with ``arguments`` by what running it would do.

    The policy table (with annotations that can only raise caution), else the annotations,
    else the SLM: its label probabilities from token log-probs, calibrated against its
    content-free prior (:func:`calibrate`); below ``policy.confidence_threshold`` the call is
    unknown and the LLM decides, or, without a usable LLM answer, it is irreversible.

    Example:
        >>> from langchain_core.tools import tool
        >>> @tool
        ... def get_order(order_id: str) -> str:
        ...     '''Look an order up.'''
        ...     return "shipped"
        >>> get_order.metadata = {"readOnlyHint": True}
        >>> verdict = classify_tool_call(get_order, {"order_id": "A1"}, policy=ConsequencePolicy())
        >>> verdict.consequence.value, verdict.strategy
        ('safe', 'annotations')
        >>> strict = ConsequencePolicy(tools={"get_order": "retry_unsafe"})
        >>> classify_tool_call(get_order, {"order_id": "A1"}, policy=strict).consequence.value
        'retry_unsafe'
    """
    started = time.perf_counter()
    hints = tool_hints(tool)
    hinted = consequence_from_hints(hints)
    declared = policy.lookup(tool.name)
    if declared is not None and declared is not Consequence.UNKNOWN:
        final = most_cautious(declared, hinted)
        raised = f"; its annotations raise it to {final.value}" if final is not declared else ""
        return ConsequenceVerdict(
            consequence=final, strategy="policy", reason=f"the policy lists it as {declared.value}{raised}", hints=hints
        )
    if declared is None and hinted is not None:
        return ConsequenceVerdict(
            consequence=hinted,
            strategy="annotations",
            reason=f"its annotations {hints} imply {hinted.value}",
            hints=hints,
        )
    prompt = _describe_call(tool, arguments)
    probabilities = None
    model = None
    if declared is Consequence.UNKNOWN:
        why_unsure = "the policy lists it as unknown"
    elif slm is None:
        why_unsure = "it is undeclared and no SLM is configured"
    else:
        try:  # token counting talks to the SLM too: an outage there is an SLM failure like any other
            prior = content_free_prior(slm)
            fitted = truncate_to_tokens(
                prompt, max_tokens=slm.max_context_tokens - _LABEL_LIST_TOKENS, count_tokens=slm.count_tokens
            )[0]
            choice = slm.choose(fitted, CONSEQUENCE_DESCRIPTIONS)
        except SLMError as exc:
            why_unsure = f"the SLM failed: {exc}"
        else:
            probabilities, model = calibrate(choice.probabilities, prior), choice.usage.model
            slm_class = Consequence(max(probabilities, key=probabilities.__getitem__))
            confidence = probabilities[slm_class]
            if confidence >= policy.confidence_threshold:
                return ConsequenceVerdict(
                    consequence=slm_class,
                    strategy="slm",
                    reason=f"the SLM judged it {slm_class.value} (calibrated p={confidence:.2f})",
                    confidence=confidence,
                    probabilities=probabilities,
                    model=model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
            why_unsure = f"the SLM was unsure (calibrated p={confidence:.2f} for {slm_class.value})"
    verdict = _llm_verdict(prompt, llm, why_unsure)
    return verdict.model_copy(
        update={
            "consequence": most_cautious(verdict.consequence, hinted),
            "probabilities": probabilities,
            "hints": hints,
            "model": verdict.model or model,
            "latency_ms": (time.perf_counter() - started) * 1000,
        }
    )


@lru_cache(maxsize=8)
def content_free_prior(slm: SLM) -> dict[str, float]:
    """The SLM's class probabilities for a call with no content: its bias, to divide out of its answers.

    One SLM call per model (cached): the scoring is deterministic.
    """
    prompt = render_prompt("consequence", tool="N/A", description="N/A", arguments="N/A")
    return slm.choose(prompt, CONSEQUENCE_DESCRIPTIONS).probabilities


def calibrate(probabilities: Mapping[str, float], prior: Mapping[str, float]) -> dict[str, float]:
    """Contextual calibration (Zhao et al., 2021): ``probabilities`` over the content-free ``prior``, renormalised.

    A small model's label scores carry a strong bias of their own (the packaged SLM gives
    ``safe`` 0.96 for a call with no content); dividing it out leaves what the call itself
    moved. A class the model favours for any input thus needs more evidence to win.

    Example:
        >>> calibrate({"safe": 0.9, "irreversible": 0.1}, {"safe": 0.9, "irreversible": 0.1})
        {'safe': 0.5, 'irreversible': 0.5}
    """
    weights = {label: p / prior[label] for label, p in probabilities.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


def _describe_call(tool: BaseTool, arguments: Mapping[str, Any]) -> str:
    """The ``consequence`` prompt for the call (the SLM gets it cut to its context, the LLM whole)."""
    return render_prompt(
        "consequence",
        tool=tool.name,
        description=clean_text(tool.description or "(none)"),
        arguments=clean_text(canonical_json(dict(arguments))),
    )


def _llm_verdict(prompt: str, llm: BaseChatModel | None, why_unsure: str) -> ConsequenceVerdict:
    """The LLM's label for the call; without a usable one, the most cautious class."""
    question = f"{prompt}\n\n{render_prompt('choice', options=CONSEQUENCE_DESCRIPTIONS)}"
    answer = escalate(llm, question, reason=why_unsure)
    if not isinstance(answer, AIMessage):
        return ConsequenceVerdict(
            consequence=Consequence.IRREVERSIBLE,
            strategy="fallback",
            reason=f"{answer.reason}; treated as irreversible until a person approves",
            escalated=llm is not None,
        )
    labels = set(_LABEL_PATTERN.findall(answer.text.lower()))
    model = (answer.response_metadata or {}).get("model_name")
    if len(labels) == 1:
        consequence, strategy = Consequence(labels.pop()), "llm"
        reason = f"{why_unsure}; the LLM judged it {consequence.value}"
    else:
        consequence, strategy = Consequence.IRREVERSIBLE, "fallback"
        reason = f"{why_unsure}; the LLM answered {answer.text[:200]!r}, not one class; treated as irreversible"
    return ConsequenceVerdict(consequence=consequence, strategy=strategy, reason=reason, escalated=True, model=model)


REQUEST_CHARS = 500
"""How much of the customer's request an approval request quotes."""


class ApprovalAction(BaseModel):
    """A call as a person sees it, and as an edit gives it back."""

    name: str
    arguments: dict[str, Any]


class ApprovalRequest(ApprovalAction):
    """One call put to a person: ``arguments`` are those it runs with, every figure explicit."""

    description: str
    tool_call_id: str | None = None
    request: str | None = Field(
        default=None, description=f"the customer's words the call serves, cut to {REQUEST_CHARS} characters"
    )


class ReviewConfig(BaseModel):
    action_name: str
    allowed_decisions: list[Literal["approve", "edit", "reject"]] = ["approve", "edit", "reject"]
    editable_arguments: list[str] = Field(default_factory=list, description="what an edit may change; nothing else")
    arguments_schema: dict[str, Any] | None = None


class ReviewedDecision(BaseModel):
    """What every decision may carry: who made it."""

    reviewer: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="who decided: recorded as the approver, apart from the customer the call is for",
    )


class ApproveDecision(ReviewedDecision):
    type: Literal["approve"]


class EditDecision(ReviewedDecision):
    type: Literal["edit"]
    edited_action: ApprovalAction


class RejectDecision(ReviewedDecision):
    type: Literal["reject"]
    message: str | None = None


HumanDecision = ApproveDecision | EditDecision | RejectDecision
_DECISIONS = TypeAdapter(list[Annotated[HumanDecision, Field(discriminator="type")]])

ArgumentResolver = Callable[[dict[str, Any]], dict[str, Any]]
"""A read that returns a call's arguments as the tool will run them, or raises a ``ToolException`` (see
:func:`create_guarded_tool_node`)."""


@dataclass
class CallPlan:
    """What the node decided about one call, filled in step by step before the call runs."""

    call: ToolCall
    refusal: ToolMessage | None = None  # the answer of a call that must not run
    verdict: ConsequenceVerdict | None = None  # None: refused before it was classified
    key: str | None = None  # the idempotency key of a call that changes something
    arguments: dict[str, Any] | None = None  # as put to a person, every figure explicit
    approval: HumanDecision | None = None

    @property
    def consequence(self) -> Consequence | None:
        return self.verdict.consequence if self.verdict else None

    @property
    def arguments_run(self) -> dict[str, Any]:
        """The arguments the call runs with: as edited, as a person saw them, or as the model made them."""
        if isinstance(self.approval, EditDecision):
            return self.approval.edited_action.arguments
        return self.arguments if self.arguments is not None else self.call["args"]


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
) -> Callable[[Any, RunnableConfig], dict[str, Any]]:
    """A tool node that classifies each call of the last AI message and runs it as its class allows.

    Args:
        tools: the tools the model may call (plain functions are wrapped with ``@tool``).
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
            (cut to :data:`REQUEST_CHARS`), so a person sees what was asked next to what would run.
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
        name: the node's name in decision records.

    Returns ``{messages_key: [ToolMessage, ...], "decisions": [Decision, ...]}``, one of
    each per call, in call order; a decision's ``outcome`` is ``executed``, ``recovered`` (run
    again with its key after a dead worker's lease ran out), ``replayed``, ``failed`` (recorded,
    never retried), ``outcome_unknown``, ``rejected``, ``not_requested``, ``unknown_tool`` or
    ``invalid_arguments`` (the schema, a NaN or infinity, or ``resolve_arguments`` refused them).

    Calls run one after another. A call that needs approval pauses the whole node with one
    ``interrupt()`` for all such calls, before any call runs; resume with
    ``Command(resume={"decisions": [...]})``, one decision per requested action, each
    ``{"type": "approve"}``, ``{"type": "edit", "edited_action": {"name": ..., "arguments": {...}}}``
    or ``{"type": "reject", "message": ...}``, each with an optional ``"reviewer"`` (who decided,
    kept in the decision record and the key's record). An edit may change only the arguments
    ``policy.editable`` lists for the tool (``review_configs`` shows them), to values the tool's
    schema accepts. A resume value that does not fit asks again, with the error under ``"error"``,
    and uses nothing up. The outcome, a rejection included, is recorded under the key of the call
    as the model made it, so a redelivered call is answered from the record and not put to a
    person again.

    Classifications and resolutions run as LangGraph tasks, so with a checkpointer a resumed node
    reuses them instead of asking the models (or the tool) again. A ``safe`` or ``retry_safe``
    tool's exception propagates (after a ``retry_safe`` key is released) for the graph's
    ``RetryPolicy``; so does :class:`~agentgraph.errors.IdempotencyConflictError` (a duplicate in
    flight). Calls that change something need a thread id in the config unless ``key_for`` is given.
    A policy or ``resolve_arguments`` naming arguments or tools the node lacks raises
    :class:`~agentgraph.errors.ConfigError`.
    """
    by_name = {t.name: t for t in (t if isinstance(t, BaseTool) else as_tool(t) for t in tools)}
    policy = policy or ConsequencePolicy()
    resolvers = dict(resolve_arguments or {})
    _check_configuration(by_name, policy, resolvers)
    prompt_id = load_prompt("consequence").id

    @task(name=f"{name}:classify")
    def classify(tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        verdict = classify_tool_call(by_name[tool_name], arguments, policy=policy, slm=slm, llm=llm)
        return verdict.model_dump(mode="json")

    @task(name=f"{name}:resolve")
    def resolve(tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"arguments": resolvers[tool_name](_parsed_arguments(by_name[tool_name], arguments))}
        except ToolException as exc:
            return {"error": str(exc)}

    def explicit(tool_name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """``arguments`` as the tool will run them and None, or the tool's reason they cannot run."""
        if tool_name not in resolvers:
            return arguments, None
        resolved = resolve(tool_name, arguments).result()
        return resolved.get("arguments", arguments), resolved.get("error")

    def key_of(call: ToolCall, thread_id: str | None) -> str:
        if key_for is not None:
            return key_for(call, thread_id)
        if thread_id is None:
            raise MissingThreadIdError(
                f"{name} derives idempotency keys from the thread id: invoke the graph with "
                "config={'configurable': {'thread_id': ...}}, or pass key_for="
            )
        return derive_idempotency_key(thread_id, call["name"], call["args"])

    def prepare_approvals(plans: Sequence[CallPlan]) -> list[CallPlan]:
        """The plans a person must decide: irreversible calls whose key has no record, their figures explicit.

        A key with any record (settled, or in flight) was put to a person before: no second approval.
        """
        pending = []
        for plan in plans:
            if plan.consequence is not Consequence.IRREVERSIBLE or idempotency_store.get(plan.key) is not None:
                continue
            plan.arguments, error = explicit(plan.call["name"], plan.call["args"])
            if error is not None:
                plan.refusal = _error_message(plan.call, f"Error: {error}", error="invalid_arguments")
            else:
                pending.append(plan)
        return pending

    def ask_approvals(pending: Sequence[CallPlan], request: str | None) -> None:
        """Put ``pending`` to a person (one interrupt) and keep their decision on each plan."""
        if not pending:
            return
        actions = [_approval_request(p, by_name[p.call["name"]], request) for p in pending]
        reviews = [_review_config(by_name[p.call["name"]], policy) for p in pending]

        def parse(response: Any) -> list[HumanDecision]:
            decisions = _parse_decisions(response, len(pending))
            for decision, action, review in zip(decisions, actions, reviews, strict=True):
                if isinstance(decision, EditDecision):
                    _check_edit(decision, action, review, by_name[action.name], explicit)
            return decisions

        payload = {
            "action_requests": [a.model_dump() for a in actions],
            "review_configs": [r.model_dump() for r in reviews],
        }
        for plan, decision in zip(pending, _ask_until_it_fits(payload, parse), strict=True):
            plan.approval = decision

    def settle(plan: CallPlan, thread_id: str | None) -> tuple[ToolMessage, Decision]:
        """Run or answer one planned call, and its decision record (logged, a fault's included)."""
        decision = _call_decision(name, plan, thread_id, prompt_id)
        try:
            if plan.refusal is not None:
                message, outcome = plan.refusal, plan.refusal.response_metadata["error"]
            elif plan.key is not None:
                message, outcome = _run_once(plan, by_name[plan.call["name"]], idempotency_store)
            else:  # safe: runs as often as it is called
                message, outcome = _invoke(by_name[plan.call["name"]], plan.call), "executed"
        except Exception as exc:
            log_decision(decision_log, decision.model_copy(update={"outcome": f"error: {type(exc).__name__}: {exc}"}))
            raise
        return message, log_decision(decision_log, decision.model_copy(update={"outcome": outcome}))

    def guarded_tools(state: Any, config: RunnableConfig) -> dict[str, Any]:
        thread_id = thread_id_of(config)
        plans = [CallPlan(call, refusal=_refusal(call, by_name)) for call in _last_tool_calls(state, messages_key)]
        classifying = [(p, classify(p.call["name"], p.call["args"])) for p in plans if p.refusal is None]
        for plan, verdict in classifying:
            plan.verdict = ConsequenceVerdict.model_validate(verdict.result())
        consented = consent_key is None or bool(_state_value(state, consent_key))
        for plan in plans:
            if plan.refusal is None and plan.consequence is not Consequence.SAFE:
                if consented:
                    plan.key = key_of(plan.call, thread_id)
                else:
                    plan.refusal = _not_requested(plan.call, plan.consequence)
        request = _state_value(state, request_key) if request_key is not None else None
        ask_approvals(prepare_approvals([p for p in plans if p.key is not None]), request)
        settled = [settle(plan, thread_id) for plan in plans]
        return {messages_key: [m for m, _ in settled], "decisions": [d for _, d in settled]}

    guarded_tools.__name__ = name
    return guarded_tools


def _run_once(plan: CallPlan, tool: BaseTool, idempotency_store: IdempotencyStore) -> tuple[ToolMessage, str]:
    """Settle the planned call at most once per key: run it (as approved) or record its rejection.

    The key stands for the call as the model made it, so a redelivered call finds the
    recorded outcome of what was approved, edited or rejected, and is not put to a person again.
    """
    call, consequence, key, approval = plan.call, plan.consequence, plan.key, plan.approval
    retry_safe = consequence is Consequence.RETRY_SAFE
    flags = {"consequence": consequence.value, "idempotency_key": key}
    recorded = {"approval": _approval_record(approval)}
    try:
        reservation = idempotency_store.begin(
            key, request_fingerprint(call["name"], call["args"]), recover_stale=retry_safe
        )
    except IdempotencyOutcomeUnknownError as exc:
        return _error_message(call, str(exc), retry_blocked=True, **flags), "outcome_unknown"
    if not reservation.started:
        return _replay(call, reservation.record, flags), "replayed"
    if consequence is Consequence.IRREVERSIBLE and approval is None:
        # Its record vanished (expired) between the approval check and now: never run unapproved.
        idempotency_store.release(reservation)
        raise IdempotencyConflictError(key, "its record expired while the node ran; run the node again to ask")
    if isinstance(approval, RejectDecision):
        rejection = f"a person rejected this call: {approval.message or 'no reason given'}"
        idempotency_store.fail(reservation, {"error": rejection, **recorded})
        return _rejected(call, rejection, flags), "rejected"
    arguments = plan.arguments_run
    if _accepts_key(tool):
        arguments = {**arguments, IDEMPOTENCY_KEY_ARG: key}
    try:
        message = _invoke(tool, {**call, "args": arguments})
    except Exception as exc:
        if retry_safe:
            idempotency_store.release(reservation)
            raise
        error = f"{type(exc).__name__}: {exc}"
        idempotency_store.fail(reservation, {"error": error, **recorded})
        return _error_message(call, _blocked(error), retry_blocked=True, **flags), "failed"
    idempotency_store.complete(
        reservation,
        {"content": message.content, "artifact": message.artifact, "status": message.status, **recorded},
    )
    message.response_metadata.update(flags)
    return message, "recovered" if reservation.recovered else "executed"


def _check_configuration(
    by_name: Mapping[str, BaseTool], policy: ConsequencePolicy, resolvers: Mapping[str, ArgumentResolver]
) -> None:
    """Refuse editable arguments a tool does not take and resolvers for tools the node lacks: typos that would
    silently make nothing editable, or leave an amount implicit."""
    for tool_name, arguments in policy.editable.items():
        if tool_name not in by_name:
            continue  # one policy may serve the tools of several nodes
        if unknown := arguments - set(_arguments_schema(by_name[tool_name]).get("properties", {})):
            raise ConfigError(
                f"policy.editable lists {sorted(unknown)} for {tool_name}, which takes no such arguments; "
                "name arguments of its schema"
            )
    if unknown_tools := set(resolvers) - set(by_name):
        raise ConfigError(f"resolve_arguments names {sorted(unknown_tools)}, not tools of this node; drop them")


def _state_value(state: Any, key: str) -> Any:
    return state.get(key) if isinstance(state, Mapping) else getattr(state, key, None)


def _call_decision(node: str, plan: CallPlan, thread_id: str | None, prompt_id: str) -> Decision:
    """The record of one call, before its outcome is known (no verdict: the call was refused unclassified)."""
    call, verdict, approval = plan.call, plan.verdict, plan.approval
    metadata: dict[str, Any] = {"prompt": prompt_id}
    if verdict is not None:
        metadata |= {"reason": verdict.reason, "hints": verdict.hints, "probabilities": verdict.probabilities}
    if plan.arguments is not None and plan.arguments != call["args"]:
        metadata["resolved_arguments"] = plan.arguments
    if approval is not None:
        metadata |= {"approval": approval.type, "reviewer": approval.reviewer}
    if isinstance(approval, EditDecision):
        metadata["edited_arguments"] = approval.edited_action.arguments
    if plan.key is not None:
        metadata["idempotency_key"] = plan.key
    return Decision(
        node=node,
        kind="classify_tool",
        input={"tool": call["name"], "arguments": call["args"], "tool_call_id": call["id"]},
        output=verdict.consequence.value if verdict else None,
        confidence=verdict.confidence if verdict else None,
        strategy=verdict.strategy if verdict else None,
        escalated=verdict.escalated if verdict else False,
        model=verdict.model if verdict else None,
        latency_ms=verdict.latency_ms if verdict else 0.0,
        thread_id=thread_id,
        metadata=metadata,
    )


def _approval_request(plan: CallPlan, tool: BaseTool, request: str | None) -> ApprovalRequest:
    """``plan``'s call as a person sees it: what the customer asked, and exactly what would run."""
    quoted = truncate_to_tokens(clean_text(request), max_tokens=REQUEST_CHARS, count_tokens=len)[0] if request else None
    asked = f"\nThe customer asked: {canonical_json(quoted)}" if quoted else ""
    return ApprovalRequest(
        name=plan.call["name"],
        arguments=plan.arguments,
        tool_call_id=plan.call["id"],
        request=quoted,
        description=(
            f"{tool.description}\n\n`{tool.name}` is classified irreversible ({plan.verdict.reason}); it runs only "
            f"if you approve.{asked}\nIt would run with: {canonical_json(plan.arguments)}"
        ),
    )


def _review_config(tool: BaseTool, policy: ConsequencePolicy) -> ReviewConfig:
    editable = sorted(policy.editable_arguments(tool.name))
    return ReviewConfig(
        action_name=tool.name,
        allowed_decisions=["approve", "edit", "reject"] if editable else ["approve", "reject"],
        editable_arguments=editable,
        arguments_schema=_arguments_schema(tool),
    )


def _ask_until_it_fits(payload: dict[str, Any], parse: Callable[[Any], list[HumanDecision]]) -> list[HumanDecision]:
    """``interrupt(payload)`` until ``parse`` accepts the answer; each answer that does not fit asks again,
    with why under ``"error"``."""
    asked = payload
    while True:
        try:
            return parse(interrupt(asked))
        except ApprovalResponseError as exc:
            asked = {**payload, "error": str(exc)}


def _parse_decisions(response: Any, expected: int) -> list[HumanDecision]:
    if not isinstance(response, Mapping) or "decisions" not in response:
        raise ApprovalResponseError("resume with {'decisions': [...]}, one decision per action request")
    try:
        decisions = _DECISIONS.validate_python(response["decisions"])
    except ValidationError as exc:
        raise ApprovalResponseError(
            f"each decision must be approve, edit (with edited_action) or reject: {exc}"
        ) from exc
    if len(decisions) != expected:
        raise ApprovalResponseError(f"got {len(decisions)} decisions for {expected} action requests")
    return decisions


def _check_edit(
    edit: EditDecision,
    action: ApprovalRequest,
    review: ReviewConfig,
    tool: BaseTool,
    explicit: Callable[[str, dict[str, Any]], tuple[dict[str, Any], str | None]],
) -> None:
    """Raise :class:`ApprovalResponseError` unless ``edit`` changes only what ``review`` allows, to values that run."""
    edited = edit.edited_action.arguments
    if edit.edited_action.name != action.name:
        raise ApprovalResponseError(
            f"an edit may change the arguments of `{action.name}`, not the tool "
            f"(got `{edit.edited_action.name}`); reject it and let the agent call the other tool"
        )
    if "edit" not in review.allowed_decisions:
        raise ApprovalResponseError(f"nothing in `{action.name}` is editable: approve or reject it")
    if forbidden := _changed_arguments(action.arguments, edited) - set(review.editable_arguments):
        raise ApprovalResponseError(
            f"an edit of `{action.name}` may change only {review.editable_arguments}, not {sorted(forbidden)}; "
            "reject the call if those are wrong"
        )
    if (error := _argument_error(tool, edited)) is not None:
        raise ApprovalResponseError(f"the edited arguments of `{action.name}` do not fit: {error}")
    resolved, error = explicit(action.name, edited)
    if error is not None:
        raise ApprovalResponseError(f"`{action.name}` cannot run as edited: {error}")
    if resolved != edited:
        raise ApprovalResponseError(
            f"the edit leaves `{action.name}` to work out a figure; edit it to exactly what runs: "
            f"{canonical_json(resolved)}"
        )


def _changed_arguments(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    """The arguments ``after`` adds, drops or gives another value."""
    missing = object()
    return {name for name in before.keys() | after.keys() if before.get(name, missing) != after.get(name, missing)}


def _last_tool_calls(state: Any, messages_key: str) -> list[ToolCall]:
    last_ai = next((m for m in reversed(_state_value(state, messages_key) or []) if isinstance(m, AIMessage)), None)
    if last_ai is None or not last_ai.tool_calls:
        raise NoToolCallsError(
            f"no AI message with tool calls under state key {messages_key!r}: the node runs after a model's tool "
            "calls (resuming a thread with no pending approval, e.g. an unknown thread id, also ends here)"
        )
    return list(last_ai.tool_calls)


def _refusal(call: ToolCall, by_name: Mapping[str, BaseTool]) -> ToolMessage | None:
    """An error message for a call that must not run at all (unknown tool, invalid arguments), else None."""
    tool = by_name.get(call["name"])
    if tool is None:
        text = f"Error: {call['name']} is not a valid tool, try one of [{', '.join(by_name)}]."
        return _error_message(call, text, error="unknown_tool")
    if (error := _argument_error(tool, call["args"])) is not None:
        text = f"Error: invalid arguments for {call['name']}: {error}\nFix them and call again."
        return _error_message(call, text, error="invalid_arguments")
    return None


def _argument_error(tool: BaseTool, arguments: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` cannot go to ``tool``: its schema refuses them, or they hold a NaN or an infinity."""
    try:
        parsed = _parsed_arguments(tool, arguments)
    except ValidationError as exc:
        return str(exc)
    # Pydantic floats allow NaN and infinities (also from strings such as "nan"): no amount is either.
    return "numbers must be finite (not NaN or infinity)" if _holds_non_finite(parsed) else None


def _parsed_arguments(tool: BaseTool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as the tool's schema parses them (as given, for a tool whose schema is plain JSON Schema)."""
    schema = tool.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_validate(dict(arguments)).model_dump()
    return dict(arguments)


def _holds_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(v) for v in value)
    return False


def _arguments_schema(tool: BaseTool) -> dict[str, Any]:
    schema = tool.tool_call_schema
    return schema.model_json_schema() if isinstance(schema, type) and issubclass(schema, BaseModel) else dict(schema)


def _accepts_key(tool: BaseTool) -> bool:
    """Whether the tool declares the injected ``idempotency_key`` argument (hidden from the model)."""
    schema, visible = tool.args_schema, tool.tool_call_schema
    return (
        isinstance(schema, type)
        and IDEMPOTENCY_KEY_ARG in schema.model_fields
        and IDEMPOTENCY_KEY_ARG not in getattr(visible, "model_fields", {})
    )


def _invoke(tool: BaseTool, call: ToolCall) -> ToolMessage:
    message = tool.invoke({**call, "type": "tool_call"})
    if not isinstance(message, ToolMessage):
        raise TypeError(f"guarded tool {tool.name} returned {type(message).__name__}; it must return content")
    return message


def _approval_record(approval: HumanDecision | None) -> dict[str, Any] | None:
    """What a key's record keeps of the person's decision: which, and who made it."""
    return None if approval is None else {"decision": approval.type, "reviewer": approval.reviewer}


def _replay(call: ToolCall, record: IdempotencyRecord, flags: dict[str, Any]) -> ToolMessage:
    """The outcome an earlier run recorded, as this call's message."""
    # A failure recorded before decisions were kept with it is its error text alone.
    result = record.result if isinstance(record.result, dict) else {"error": record.result, "approval": None}
    if record.status == "failed" and (result["approval"] or {}).get("decision") == "reject":
        return _rejected(call, result["error"], {**flags, "replayed": True})
    if record.status == "failed":
        return _error_message(call, _blocked(result["error"]), retry_blocked=True, replayed=True, **flags)
    return ToolMessage(
        content=result["content"],
        artifact=result["artifact"],
        status=result["status"],
        name=call["name"],
        tool_call_id=call["id"],
        response_metadata={**flags, "replayed": True},
    )


def _rejected(call: ToolCall, rejection: str, flags: dict[str, Any]) -> ToolMessage:
    return _error_message(call, f"Error: {rejection}. It did not run.", error="rejected", **flags)


def _not_requested(call: ToolCall, consequence: Consequence) -> ToolMessage:
    return _error_message(
        call,
        f"Error: {call['name']} changes something ({consequence.value}) and the customer did not ask for it in "
        "this turn, so it did not run. Ask them to confirm it first.",
        error="not_requested",
        consequence=consequence.value,
    )


def _blocked(error: str) -> str:
    return (
        f"Error: {error}\nThis call is never retried automatically: it may have taken effect. "
        "Repeating it in this thread returns this error again."
    )


def _error_message(call: ToolCall, text: str, **flags: Any) -> ToolMessage:
    return ToolMessage(
        content=text, name=call["name"], tool_call_id=call["id"], status="error", response_metadata=flags
    )
