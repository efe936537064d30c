"""The approval protocol: one ``interrupt()`` puts calls to a person, who approves, edits or rejects each.

The interrupt's value is ``{"action_requests": [...], "review_configs": [...]}``, one
:class:`ApprovalRequest` and one :class:`ReviewConfig` per call; the graph resumes with
``Command(resume={"decisions": [...]})``, one decision per request: ``{"type": "approve"}``,
``{"type": "edit", "edited_action": {"name": ..., "arguments": {...}}}`` or
``{"type": "reject", "message": ...}``, each with an optional ``"reviewer"``. An answer that does
not fit is asked again, with why under ``"error"``.

Example:
    >>> parse_decisions({"decisions": [{"type": "approve", "reviewer": "ops-anna"}]}, expected=1)
    [ApproveDecision(reviewer='ops-anna', type='approve')]
    >>> parse_decisions({"decisions": [{"type": "approve"}]}, expected=2)
    Traceback (most recent call last):
    ...
    agentgraph.errors.ApprovalResponseError: got 1 decisions for 2 action requests
    >>> sorted(changed_arguments({"order_id": "A1", "amount": 30.0}, {"order_id": "A1", "amount": 12.5}))
    ['amount']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from langchain_core.tools import BaseTool
from langgraph.types import interrupt
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agentgraph.errors import ApprovalResponseError
from agentgraph.idempotency import canonical_json
from agentgraph.nodes.consequence_classification import ConsequencePolicy
from agentgraph.nodes.tool_calls import argument_error, arguments_schema
from agentgraph.text import clean_text, truncate_to_tokens

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


Explicit = Callable[[str, dict[str, Any]], tuple[dict[str, Any], str | None]]
"""``(tool name, arguments)`` to the arguments as the tool will run them and None, or the reason they cannot run."""


def approval_request(
    tool: BaseTool, arguments: dict[str, Any], *, tool_call_id: str | None, reason: str, request: str | None
) -> ApprovalRequest:
    """A call of ``tool`` as a person sees it: what the customer asked, and exactly what would run."""
    quoted = truncate_to_tokens(clean_text(request), max_tokens=REQUEST_CHARS, count_tokens=len)[0] if request else None
    asked = f"\nThe customer asked: {canonical_json(quoted)}" if quoted else ""
    return ApprovalRequest(
        name=tool.name,
        arguments=arguments,
        tool_call_id=tool_call_id,
        request=quoted,
        description=(
            f"{tool.description}\n\n`{tool.name}` is classified irreversible ({reason}); it runs only "
            f"if you approve.{asked}\nIt would run with: {canonical_json(arguments)}"
        ),
    )


def review_config(tool: BaseTool, policy: ConsequencePolicy) -> ReviewConfig:
    """What a person may answer about a call of ``tool``: an edit only where the policy lists editable arguments."""
    editable = sorted(policy.editable_arguments(tool.name))
    return ReviewConfig(
        action_name=tool.name,
        allowed_decisions=["approve", "edit", "reject"] if editable else ["approve", "reject"],
        editable_arguments=editable,
        arguments_schema=arguments_schema(tool),
    )


def ask_for_decisions(
    actions: Sequence[ApprovalRequest],
    reviews: Sequence[ReviewConfig],
    tools: Mapping[str, BaseTool],
    explicit: Explicit,
) -> list[HumanDecision]:
    """Put ``actions`` to a person with one ``interrupt()``, until the answer fits: one decision per action."""
    payload: dict[str, Any] = {
        "action_requests": [a.model_dump() for a in actions],
        "review_configs": [r.model_dump() for r in reviews],
    }

    def parse(response: Any) -> list[HumanDecision]:
        decisions = parse_decisions(response, len(actions))
        for decision, action, review in zip(decisions, actions, reviews, strict=True):
            if isinstance(decision, EditDecision):
                check_edit(decision, action, review, tools[action.name], explicit)
        return decisions

    asked = payload
    while True:  # each answer that does not fit asks again, with why under "error"
        try:
            return parse(interrupt(asked))
        except ApprovalResponseError as exc:
            asked = {**payload, "error": str(exc)}


def parse_decisions(response: Any, expected: int) -> list[HumanDecision]:
    """The decisions of a resume value, one per action request, or :class:`ApprovalResponseError` saying why not."""
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


def check_edit(
    edit: EditDecision, action: ApprovalRequest, review: ReviewConfig, tool: BaseTool, explicit: Explicit
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
    if forbidden := changed_arguments(action.arguments, edited) - set(review.editable_arguments):
        raise ApprovalResponseError(
            f"an edit of `{action.name}` may change only {review.editable_arguments}, not {sorted(forbidden)}; "
            "reject the call if those are wrong"
        )
    if (error := argument_error(tool, edited)) is not None:
        raise ApprovalResponseError(f"the edited arguments of `{action.name}` do not fit: {error}")
    resolved, error = explicit(action.name, edited)
    if error is not None:
        raise ApprovalResponseError(f"`{action.name}` cannot run as edited: {error}")
    if resolved != edited:
        raise ApprovalResponseError(
            f"the edit leaves `{action.name}` to work out a figure; edit it to exactly what runs: "
            f"{canonical_json(resolved)}"
        )


def changed_arguments(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    """The arguments ``after`` adds, drops or gives another value."""
    missing = object()
    return {name for name in before.keys() | after.keys() if before.get(name, missing) != after.get(name, missing)}
