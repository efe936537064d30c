"""What the consequence guard decided about one tool call, and how a call that does not simply run is answered.

A :class:`CallPlan` is filled in step by step before its call runs; the answers of calls that do
not run (refused, not requested, rejected, replayed, blocked after a failure) are error
``ToolMessage`` objects whose ``response_metadata`` says why, so an agent loop can tell them apart.

Example:
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore
    >>> call = {"name": "charge_card", "args": {"amount": 20.0}, "id": "c1"}
    >>> refusal(call, {}).content
    'Error: charge_card is not a valid tool, try one of [].'
    >>> store = SQLiteIdempotencyStore(":memory:")
    >>> store.complete(store.begin("k1", "h"), {"content": "charged", "artifact": None, "status": "success"})
    >>> replayed = replay(call, store.begin("k1", "h").record, {"idempotency_key": "k1"})
    >>> replayed.content, replayed.response_metadata
    ('charged', {'idempotency_key': 'k1', 'replayed': True})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.errors import GraphBubbleUp
from langgraph.types import Command

from agentgraph.errors import (
    AgentGraphError,
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyOutcomeUnknownError,
)
from agentgraph.idempotency import IdempotencyRecord, IdempotencyStore, Reservation, request_fingerprint
from agentgraph.nodes.approvals import EditDecision, HumanDecision, RejectDecision
from agentgraph.nodes.consequence_classification import Consequence, ConsequenceVerdict
from agentgraph.nodes.tool_calls import argument_error
from agentgraph.records.decisions import Decision
from agentgraph.slm.base import tokens_of

DECISIONS_KEY = "decisions"
"""The state key the guard's decision records go to (:class:`~agentgraph.records.decisions.DecisionState`'s)."""


@dataclass
class CallPlan:
    """What the guard decided about one call, filled in step by step before the call runs."""

    call: ToolCall
    thread_id: str | None = None
    refusal: ToolMessage | None = None  # the answer of a call that must not run
    verdict: ConsequenceVerdict | None = None  # None: refused before it was classified
    key: str | None = None  # the idempotency key of a call that changes something
    arguments: dict[str, Any] | None = None  # as put to a person, every figure explicit
    approval: HumanDecision | None = None
    decision: Decision | None = None  # the record, once planned; its outcome once settled (or stopped by a fault)

    @property
    def consequence(self) -> Consequence | None:
        return self.verdict.consequence if self.verdict else None

    @property
    def retry_safe(self) -> bool:
        return self.consequence is Consequence.RETRY_SAFE

    @property
    def flags(self) -> dict[str, Any]:
        """What the call's message carries in ``response_metadata``: its class (None: unclassified) and its key."""
        consequence = self.consequence
        return {"consequence": consequence.value if consequence is not None else None, "idempotency_key": self.key}

    @property
    def planned_decision(self) -> Decision:
        """The call's decision record, drafted by ``ConsequenceGuard.plan`` before any call runs."""
        if self.decision is None:
            raise AgentGraphError(
                f"tool call {self.call['id']} was never planned: settle only the plans ConsequenceGuard.plan returns"
            )
        return self.decision

    @property
    def arguments_run(self) -> dict[str, Any]:
        """The arguments the call runs with: as edited, as a person saw them, or as the model made them."""
        if isinstance(self.approval, EditDecision):
            return self.approval.edited_action.arguments
        return self.arguments if self.arguments is not None else self.call["args"]


class Settled(NamedTuple):
    """How a call ended: what the tool node returns for it, and the outcome its decision record gets."""

    result: ToolMessage | Command
    outcome: str


def open_call(plan: CallPlan, store: IdempotencyStore) -> Settled | Reservation | None:
    """The answer of a call that does not run now, or what it runs under: its key's reservation (None: safe).

    The key stands for the call as the model made it, so a redelivered call finds the recorded
    outcome of what was approved, edited or rejected, and is not put to a person again.
    """
    call, key = plan.call, plan.key
    if plan.refusal is not None:
        return Settled(plan.refusal, plan.refusal.response_metadata["error"])
    if key is None:  # safe: runs as often as it is called
        return None
    try:
        reservation = store.begin(key, request_fingerprint(call["name"], call["args"]), recover_stale=plan.retry_safe)
    except IdempotencyOutcomeUnknownError as exc:
        return Settled(error_message(call, str(exc), retry_blocked=True, **plan.flags), "outcome_unknown")
    if not reservation.started:
        if reservation.record is None:  # the store broke its contract: a call it did not reserve never runs
            raise IdempotencyError(key, "the store neither reserved it nor returned its recorded outcome")
        return Settled(replay(call, reservation.record, plan.flags), "replayed")
    if plan.consequence is Consequence.IRREVERSIBLE and plan.approval is None:
        # Its record vanished (expired) between the approval check and now: never run unapproved.
        store.release(reservation)
        raise IdempotencyConflictError(key, "its record expired while the node ran; run the node again to ask")
    if isinstance(plan.approval, RejectDecision):
        rejection = f"a person rejected this call: {plan.approval.message or 'no reason given'}"
        store.fail(reservation, {"error": rejection, "approval": approval_record(plan.approval)})
        return Settled(rejected(call, rejection, plan.flags), "rejected")
    return reservation


def failed_call(plan: CallPlan, store: IdempotencyStore, reservation: Reservation | None, exc: Exception) -> Settled:
    """A call that raised: recorded and answered flagged ``retry_blocked`` when it changes something each
    time; otherwise (``safe``, ``retry_safe``, an interrupt inside the tool) the key is freed and it raises."""
    if reservation is None or plan.retry_safe or isinstance(exc, GraphBubbleUp):
        if reservation is not None:
            store.release(reservation)
        raise exc
    error = f"{type(exc).__name__}: {exc}"
    store.fail(reservation, {"error": error, "approval": approval_record(plan.approval)})
    return Settled(error_message(plan.call, blocked(error), retry_blocked=True, **plan.flags), "failed")


def ran_call(
    plan: CallPlan,
    store: IdempotencyStore,
    reservation: Reservation | None,
    result: ToolMessage | Command,
    messages_key: str,
) -> Settled:
    """A call that ran: its key records the call's message (its content, artifact and status)."""
    if reservation is None:
        return Settled(result, "executed")
    message = message_for(result, plan.call["id"], messages_key)
    # A Command to the parent graph, say, has no message of the call.
    recorded: dict[str, Any] = {"content": "", "artifact": None, "status": "success"}
    if message is not None:
        recorded = {"content": message.content, "artifact": message.artifact, "status": message.status}
        message.response_metadata.update(plan.flags)
    store.complete(reservation, {**recorded, "approval": approval_record(plan.approval)})
    return Settled(result, "recovered" if reservation.recovered else "executed")


def with_decision(
    result: ToolMessage | Command, decision: Decision, state: Any, messages_key: str
) -> ToolMessage | Command:
    """``result`` carrying ``decision`` into the state under ``decisions`` (a state that is a message list has no
    place for it: it is in the decision log only)."""
    if isinstance(state, list):
        return result
    if isinstance(result, ToolMessage):
        return Command(update={messages_key: [result], DECISIONS_KEY: [decision]})
    if isinstance(result.update, dict):
        return replace(
            result, update={**result.update, DECISIONS_KEY: [*result.update.get(DECISIONS_KEY, []), decision]}
        )
    return result


def call_decision(node: str, plan: CallPlan, prompt_id: str) -> Decision:
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
        thread_id=plan.thread_id,
        metadata=metadata,
        **tokens_of([verdict.usage if verdict else None]),
    )


def refusal(call: ToolCall, by_name: Mapping[str, BaseTool]) -> ToolMessage | None:
    """An error message for a call that must not run at all (unknown tool, invalid arguments), else None."""
    tool = by_name.get(call["name"])
    if tool is None:
        text = f"Error: {call['name']} is not a valid tool, try one of [{', '.join(by_name)}]."
        return error_message(call, text, error="unknown_tool")
    if (error := argument_error(tool, call["args"])) is not None:
        text = f"Error: invalid arguments for {call['name']}: {error}\nFix them and call again."
        return error_message(call, text, error="invalid_arguments")
    return None


def message_for(result: ToolMessage | Command | list, call_id: str | None, messages_key: str) -> ToolMessage | None:
    """The ToolMessage that answers ``call_id`` in what a tool returned: a message, a ``Command`` or a list."""
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, ToolMessage) and item.tool_call_id == call_id:
            return item
        if isinstance(item, Command):
            update = item.update.get(messages_key, []) if isinstance(item.update, dict) else item.update or []
            if found := message_for(list(update), call_id, messages_key):
                return found
    return None


def approval_record(approval: HumanDecision | None) -> dict[str, Any] | None:
    """What a key's record keeps of the person's decision: which, and who made it."""
    return None if approval is None else {"decision": approval.type, "reviewer": approval.reviewer}


def replay(call: ToolCall, record: IdempotencyRecord, flags: dict[str, Any]) -> ToolMessage:
    """The outcome an earlier run recorded, as this call's message."""
    # A failure recorded before decisions were kept with it is its error text alone.
    result = record.result if isinstance(record.result, dict) else {"error": record.result, "approval": None}
    if record.status == "failed" and (result["approval"] or {}).get("decision") == "reject":
        return rejected(call, result["error"], {**flags, "replayed": True})
    if record.status == "failed":
        return error_message(call, blocked(result["error"]), retry_blocked=True, replayed=True, **flags)
    return ToolMessage(
        content=result["content"],
        artifact=result["artifact"],
        status=result["status"],
        name=call["name"],
        tool_call_id=call["id"],
        response_metadata={**flags, "replayed": True},
    )


def rejected(call: ToolCall, rejection: str, flags: dict[str, Any]) -> ToolMessage:
    return error_message(call, f"Error: {rejection}. It did not run.", error="rejected", **flags)


def not_requested(call: ToolCall, consequence: Consequence) -> ToolMessage:
    return error_message(
        call,
        f"Error: {call['name']} changes something ({consequence.value}) and the customer did not ask for it in "
        "this turn, so it did not run. Ask them to confirm it first.",
        error="not_requested",
        consequence=consequence.value,
    )


def blocked(error: str) -> str:
    return (
        f"Error: {error}\nThis call is never retried automatically: it may have taken effect. "
        "Repeating it in this thread returns this error again."
    )


def error_message(call: ToolCall, text: str, **flags: Any) -> ToolMessage:
    return ToolMessage(
        content=text, name=call["name"], tool_call_id=call["id"], status="error", response_metadata=flags
    )
