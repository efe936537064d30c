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
  (approve / edit / reject), then runs at most once per key.
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
    >>> node = create_guarded_tool_node(
    ...     [cancel_order],
    ...     policy=ConsequencePolicy(tools={"cancel_order": "irreversible"}),
    ...     idempotency_store=SQLiteIdempotencyStore(":memory:"),
    ... )
    >>> builder = StateGraph(MessagesState)
    >>> _ = builder.add_node("tools", node).add_edge(START, "tools")
    >>> graph = builder.compile(checkpointer=InMemorySaver())
    >>> config = {"configurable": {"thread_id": "t1"}}
    >>> call = {"name": "cancel_order", "args": {"order_id": "A1"}, "id": "c1"}
    >>> paused = graph.invoke({"messages": [AIMessage("", tool_calls=[call])]}, config)
    >>> paused["__interrupt__"][0].value["action_requests"][0]["name"]
    'cancel_order'
    >>> graph.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)["messages"][-1].content
    'order A1 cancelled'
"""

from __future__ import annotations

import fnmatch
import re
import time
from functools import lru_cache
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.tools import tool as as_tool
from langgraph.func import task
from langgraph.types import interrupt
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agentgraph.decisions import Decision, DecisionLog, log_decision, thread_id_of
from agentgraph.errors import (
    ApprovalResponseError,
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
    Mapping a tool to ``unknown`` sends its calls straight to the LLM.
    """

    tools: dict[str, Consequence] = Field(default_factory=dict)
    confidence_threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="below this SLM probability the call is unknown and goes to the LLM"
    )

    def lookup(self, tool_name: str) -> Consequence | None:
        if tool_name in self.tools:
            return self.tools[tool_name]
        return next((c for pattern, c in self.tools.items() if fnmatch.fnmatchcase(tool_name, pattern)), None)


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
    prompt = _describe_call(tool, arguments, slm)
    probabilities = None
    model = None
    if declared is Consequence.UNKNOWN:
        why_unsure = "the policy lists it as unknown"
    elif slm is None:
        why_unsure = "it is undeclared and no SLM is configured"
    else:
        try:
            prior = content_free_prior(slm)
            choice = slm.choose(prompt, CONSEQUENCE_DESCRIPTIONS)
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


def _describe_call(tool: BaseTool, arguments: Mapping[str, Any], slm: SLM | None) -> str:
    """The ``consequence`` prompt for the call, cut to fit the SLM's context when there is one."""
    prompt = render_prompt(
        "consequence",
        tool=tool.name,
        description=clean_text(tool.description or "(none)"),
        arguments=clean_text(canonical_json(dict(arguments))),
    )
    if slm is None:
        return prompt
    return truncate_to_tokens(
        prompt, max_tokens=slm.max_context_tokens - _LABEL_LIST_TOKENS, count_tokens=slm.count_tokens
    )[0]


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


class ApprovalAction(BaseModel):
    """A call as a person sees it, and as an edit gives it back."""

    name: str
    arguments: dict[str, Any]


class ApprovalRequest(ApprovalAction):
    description: str
    tool_call_id: str | None = None


class ReviewConfig(BaseModel):
    action_name: str
    allowed_decisions: list[Literal["approve", "edit", "reject"]] = ["approve", "edit", "reject"]
    arguments_schema: dict[str, Any] | None = None


class ApproveDecision(BaseModel):
    type: Literal["approve"]


class EditDecision(BaseModel):
    type: Literal["edit"]
    edited_action: ApprovalAction


class RejectDecision(BaseModel):
    type: Literal["reject"]
    message: str | None = None


HumanDecision = ApproveDecision | EditDecision | RejectDecision
_DECISIONS = TypeAdapter(list[Annotated[HumanDecision, Field(discriminator="type")]])


def create_guarded_tool_node(
    tools: Sequence[BaseTool | Callable[..., Any]],
    *,
    idempotency_store: IdempotencyStore,
    policy: ConsequencePolicy | None = None,
    slm: SLM | None = None,
    llm: BaseChatModel | None = None,
    decision_log: DecisionLog | None = None,
    key_for: Callable[[ToolCall, str | None], str] | None = None,
    messages_key: str = "messages",
    name: str = "guarded_tools",
) -> Callable[[Any, RunnableConfig], dict[str, Any]]:
    """A tool node that classifies each call of the last AI message and runs it as its class allows.

    Args:
        tools: the tools the model may call (plain functions are wrapped with ``@tool``).
        idempotency_store: where keys of calls that change something are reserved and recorded.
        policy: the operator's class table and SLM confidence threshold.
        slm: classifies undeclared tools; without one they go to the LLM.
        llm: the verdict on unknown calls; without one they need a person's approval.
        decision_log: also receives every call's :class:`~agentgraph.decisions.Decision`.
        key_for: the idempotency key of a call, from the call and the thread id; by default
            derived from thread, tool and arguments (so the same call in the same thread runs
            once within the store's retention window). ``lambda call, thread: call["id"]`` keys
            by tool-call id instead.
        messages_key: the state key holding the messages; ToolMessages are appended to it.
        name: the node's name in decision records.

    Returns ``{messages_key: [ToolMessage, ...], "decisions": [Decision, ...]}``, one of
    each per call, in call order; a decision's ``outcome`` is ``executed``, ``recovered`` (run
    again with its key after a dead worker's lease ran out), ``replayed``, ``failed`` (recorded,
    never retried), ``outcome_unknown``, ``rejected``, ``unknown_tool`` or ``invalid_arguments``.

    Calls run one after another. A call that needs approval pauses the whole node with one
    ``interrupt()`` for all such calls, before any call runs; resume with
    ``Command(resume={"decisions": [...]})``, one decision per requested action, each
    ``{"type": "approve"}``, ``{"type": "edit", "edited_action": {"name": ..., "arguments": {...}}}``
    or ``{"type": "reject", "message": ...}``. A resume value that does not fit asks again, with
    the error under ``"error"``. The outcome, a rejection included, is recorded under the key of
    the call as the model made it, so a redelivered call is answered from the record and not put
    to a person again.

    Classifications run as LangGraph tasks, so with a checkpointer a resumed node reuses
    them instead of asking the models again. A ``safe`` or ``retry_safe`` tool's exception
    propagates (after a ``retry_safe`` key is released) for the graph's ``RetryPolicy``; so
    does :class:`~agentgraph.errors.IdempotencyConflictError` (a duplicate in flight).
    Calls that change something need a thread id in the config unless ``key_for`` is given.
    """
    by_name = {t.name: t for t in (t if isinstance(t, BaseTool) else as_tool(t) for t in tools)}
    policy = policy or ConsequencePolicy()
    prompt_id = load_prompt("consequence").id

    @task(name=f"{name}:classify")
    def classify(tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        verdict = classify_tool_call(by_name[tool_name], arguments, policy=policy, slm=slm, llm=llm)
        return verdict.model_dump(mode="json")

    def key_of(call: ToolCall, thread_id: str | None) -> str:
        if key_for is not None:
            return key_for(call, thread_id)
        if thread_id is None:
            raise MissingThreadIdError(
                f"{name} derives idempotency keys from the thread id: invoke the graph with "
                "config={'configurable': {'thread_id': ...}}, or pass key_for="
            )
        return derive_idempotency_key(thread_id, call["name"], call["args"])

    def run_once(
        call: ToolCall, consequence: Consequence, key: str, approval: HumanDecision | None
    ) -> tuple[ToolMessage, str]:
        """Settle ``call`` at most once per key: run it (as edited, when edited) or record its rejection.

        The key stands for the call as the model made it, so a redelivered call finds the
        recorded outcome of what was approved, edited or rejected, and is not put to a person again.
        """
        tool = by_name[call["name"]]
        retry_safe = consequence is Consequence.RETRY_SAFE
        flags = {"consequence": consequence.value, "idempotency_key": key}
        arguments = approval.edited_action.arguments if isinstance(approval, EditDecision) else call["args"]
        if (invalid := _refusal({**call, "args": arguments}, by_name)) is not None:
            return invalid, invalid.response_metadata["error"]
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
            idempotency_store.fail(reservation, rejection)
            return _error_message(call, f"Error: {rejection}. It did not run.", error="rejected", **flags), "rejected"
        if _accepts_key(tool):
            arguments = {**arguments, IDEMPOTENCY_KEY_ARG: key}
        try:
            message = _invoke(tool, {**call, "args": arguments})
        except Exception as exc:
            if retry_safe:
                idempotency_store.release(reservation)
                raise
            error = f"{type(exc).__name__}: {exc}"
            idempotency_store.fail(reservation, error)
            return _error_message(call, _blocked(error), retry_blocked=True, **flags), "failed"
        idempotency_store.complete(
            reservation, {"content": message.content, "artifact": message.artifact, "status": message.status}
        )
        message.response_metadata.update(flags)
        return message, "recovered" if reservation.recovered else "executed"

    def guarded_tools(state: Any, config: RunnableConfig) -> dict[str, Any]:
        calls = _last_tool_calls(state, messages_key)
        thread_id = thread_id_of(config)
        refusals = [_refusal(call, by_name) for call in calls]
        pending = {i: classify(call["name"], call["args"]) for i, call in enumerate(calls) if refusals[i] is None}
        verdicts = {i: ConsequenceVerdict.model_validate(future.result()) for i, future in pending.items()}
        keys = {i: key_of(calls[i], thread_id) for i, v in verdicts.items() if v.consequence is not Consequence.SAFE}
        # A key with any record (settled, or in flight) was put to a person before: no second approval.
        needs_approval = [
            i
            for i, v in verdicts.items()
            if v.consequence is Consequence.IRREVERSIBLE and idempotency_store.get(keys[i]) is None
        ]
        approvals = _ask_approval([calls[i] for i in needs_approval], [verdicts[i] for i in needs_approval], by_name)
        approval_of = dict(zip(needs_approval, approvals, strict=True))
        messages: list[ToolMessage] = []
        decisions: list[Decision] = []
        for i, call in enumerate(calls):
            decision = _call_decision(
                name, call, verdicts.get(i), approval_of.get(i), keys.get(i), thread_id, prompt_id
            )
            if refusals[i] is not None:
                message, outcome = refusals[i], refusals[i].response_metadata["error"]
            else:
                try:
                    if i in keys:
                        message, outcome = run_once(call, verdicts[i].consequence, keys[i], approval_of.get(i))
                    else:  # safe: runs as often as it is called
                        message, outcome = _invoke(by_name[call["name"]], call), "executed"
                except Exception as exc:
                    log_decision(
                        decision_log, decision.model_copy(update={"outcome": f"error: {type(exc).__name__}: {exc}"})
                    )
                    raise
            decision = decision.model_copy(update={"outcome": outcome})
            log_decision(decision_log, decision)
            messages.append(message)
            decisions.append(decision)
        return {messages_key: messages, "decisions": decisions}

    guarded_tools.__name__ = name
    return guarded_tools


def _call_decision(
    node: str,
    call: ToolCall,
    verdict: ConsequenceVerdict | None,
    approval: HumanDecision | None,
    key: str | None,
    thread_id: str | None,
    prompt_id: str,
) -> Decision:
    """The record of one call, before its outcome is known (no verdict: the call was refused unclassified)."""
    metadata: dict[str, Any] = {"prompt": prompt_id}
    if verdict is not None:
        metadata |= {"reason": verdict.reason, "hints": verdict.hints, "probabilities": verdict.probabilities}
    if approval is not None:
        metadata["approval"] = approval.type
    if isinstance(approval, EditDecision):
        metadata["edited_arguments"] = approval.edited_action.arguments
    if key is not None:
        metadata["idempotency_key"] = key
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


def _ask_approval(
    calls: Sequence[ToolCall], verdicts: Sequence[ConsequenceVerdict], by_name: Mapping[str, BaseTool]
) -> list[HumanDecision]:
    """A person's decision on each of ``calls`` (none asked for when there are none).

    Asks again, with the error under ``"error"``, until the answer fits.
    """
    if not calls:
        return []
    request: dict[str, Any] = {
        "action_requests": [
            ApprovalRequest(
                name=call["name"],
                arguments=call["args"],
                tool_call_id=call["id"],
                description=(
                    f"{by_name[call['name']].description}\n\n`{call['name']}` is classified irreversible "
                    f"({verdict.reason}); it runs only if you approve.\nArguments: {canonical_json(call['args'])}"
                ),
            ).model_dump()
            for call, verdict in zip(calls, verdicts, strict=True)
        ],
        "review_configs": [
            ReviewConfig(
                action_name=call["name"], arguments_schema=_arguments_schema(by_name[call["name"]])
            ).model_dump()
            for call in calls
        ],
    }
    payload = request
    while True:
        try:
            return _parse_approvals(interrupt(payload), calls)
        except ApprovalResponseError as exc:
            payload = {**request, "error": str(exc)}


def _parse_approvals(response: Any, calls: Sequence[ToolCall]) -> list[HumanDecision]:
    if not isinstance(response, Mapping) or "decisions" not in response:
        raise ApprovalResponseError("resume with {'decisions': [...]}, one decision per action request")
    try:
        decisions = _DECISIONS.validate_python(response["decisions"])
    except ValidationError as exc:
        raise ApprovalResponseError(
            f"each decision must be approve, edit (with edited_action) or reject: {exc}"
        ) from exc
    if len(decisions) != len(calls):
        raise ApprovalResponseError(f"got {len(decisions)} decisions for {len(calls)} action requests")
    for decision, call in zip(decisions, calls, strict=True):
        if isinstance(decision, EditDecision) and decision.edited_action.name != call["name"]:
            raise ApprovalResponseError(
                f"an edit may change the arguments of `{call['name']}`, not the tool "
                f"(got `{decision.edited_action.name}`); reject it and let the agent call the other tool"
            )
    return decisions


def _last_tool_calls(state: Any, messages_key: str) -> list[ToolCall]:
    messages = state.get(messages_key) if isinstance(state, Mapping) else getattr(state, messages_key, None)
    last_ai = next((m for m in reversed(messages or []) if isinstance(m, AIMessage)), None)
    if last_ai is None or not last_ai.tool_calls:
        raise NoToolCallsError(f"no AI message with tool calls under state key {messages_key!r}")
    return list(last_ai.tool_calls)


def _refusal(call: ToolCall, by_name: Mapping[str, BaseTool]) -> ToolMessage | None:
    """An error message for a call that must not run at all (unknown tool, invalid arguments), else None."""
    tool = by_name.get(call["name"])
    if tool is None:
        text = f"Error: {call['name']} is not a valid tool, try one of [{', '.join(by_name)}]."
        return _error_message(call, text, error="unknown_tool")
    schema = tool.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            schema.model_validate(call["args"])
        except ValidationError as exc:
            return _error_message(
                call,
                f"Error: invalid arguments for {call['name']}: {exc}\nFix them and call again.",
                error="invalid_arguments",
            )
    return None


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


def _replay(call: ToolCall, record: IdempotencyRecord, flags: dict[str, Any]) -> ToolMessage:
    """The outcome an earlier run recorded, as this call's message."""
    if record.status == "failed":
        return _error_message(call, _blocked(record.result), retry_blocked=True, replayed=True, **flags)
    return ToolMessage(
        content=record.result["content"],
        artifact=record.result["artifact"],
        status=record.result["status"],
        name=call["name"],
        tool_call_id=call["id"],
        response_metadata={**flags, "replayed": True},
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
