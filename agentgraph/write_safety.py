"""Write safety: a write never runs from a message that does not ask for it.

A router that reads the topic alone turns "my order 48213 got cancelled
yesterday, thanks", "Do NOT cancel order 48213" and "Can I cancel order
48213?" into cancellations. The rule, which the router applies to every label
whose route writes (:class:`WritePolicy`), with the message's act from
:mod:`agentgraph.acts`:

1. A message that asks for nothing (a statement, a negation, a greeting or
   thanks) never reaches a write: it is acknowledged instead.
2. A question about a write ("can I cancel order 48213?") gets a confirmation
   question ("Shall I cancel order 48213?"), never a silent write.
3. A write runs straight from the message only on positive evidence that the
   message asks for it: the act is a request, at the act gate, with no word
   that declines anything; the label's confidence reaches the write gate (which
   is stricter than the route's); the message names one target at most; and it
   says more than a fragment (``min_words`` words besides its identifiers).
   Anything less is confirmed first, and the write runs on the customer's yes.
4. The customer's consent is not an approval: writes the consequence modeler
   classes irreversible still wait for a person
   (:func:`~agentgraph.nodes.consequence.create_guarded_tool_node`).
5. The tool node checks it too: given ``consent_key``, the guarded tool node
   refuses a call that changes something when the turn carries no
   :class:`WriteConsent`, whatever path produced the call.

Example:
    >>> from agentgraph.acts import ActVerdict
    >>> policy = WritePolicy(labels={"cancel_order"})
    >>> request = ActVerdict(act="request", confidence=0.97)
    >>> judge_write(policy, "I want to cancel order 48213", confidence=0.99, act=request, references=["48213"]).judgement
    'write'
    >>> judge_write(policy, "cancel 48213", confidence=0.99, act=request, references=["48213"]).reason
    'the message is a fragment (1 words besides its identifiers, under 3)'
    >>> question = ActVerdict(act="question", confidence=0.9)
    >>> judge_write(policy, "Can I cancel order 48213?", confidence=0.99, act=question, references=["48213"]).judgement
    'confirm'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from agentgraph.acts import NON_REQUESTS, ActVerdict

WriteJudgement = Literal["write", "confirm", "fragment", "which", "acknowledge"]
"""Run it; ask "Shall I ...?"; ask about a fragment (which action, or whether to go ahead); ask which of the
targets named; or only acknowledge the message."""


class WritePolicy(BaseModel):
    """Which labels write, and the evidence a write needs to run without asking first (see the module docstring)."""

    labels: frozenset[str] = Field(description="labels whose route changes something")
    gate: float = Field(default=0.9, ge=0.0, le=1.0, description="the label confidence a write needs to run unasked")
    act_gate: float = Field(default=0.7, ge=0.0, le=1.0, description="the request-act confidence it needs")
    min_words: int = Field(default=3, ge=0, description="fewer words besides identifiers: a fragment, confirmed first")

    def writes(self, label: str | None) -> bool:
        return label in self.labels


class WriteVerdict(BaseModel):
    """What the rule allows for one message routed to a write (:data:`WriteJudgement`), and why."""

    judgement: WriteJudgement
    reason: str


class WriteConsent(BaseModel):
    """The customer's consent to a write this turn: what asked for it, and how."""

    label: str
    how: Literal["requested", "confirmed", "chosen"] = Field(
        description="requested: the message asked for it; confirmed: a yes to 'Shall I ...?'; "
        "chosen: picked from the actions a clarifying question offered"
    )
    request: str = Field(description="the customer's words the write serves")


def count_words(text: str, references: Sequence[str] = ()) -> int:
    """Words of ``text`` once its identifiers (``references``) are taken out."""
    for reference in references:
        text = text.replace(reference, " ")
    return sum(any(ch.isalpha() for ch in word) for word in text.split())


def judge_write(
    policy: WritePolicy,
    text: str,
    *,
    confidence: float | None,
    act: ActVerdict | None,
    references: Sequence[str] = (),
) -> WriteVerdict:
    """The rule for one message routed to a write label (see the module docstring).

    ``references`` are the identifiers the message names (order numbers, say):
    two different ones leave the target unclear, so the customer is asked which.
    Without an act detector (``act`` None) nothing shows that the message asks,
    and every write is confirmed.
    """
    if act is not None and act.act in NON_REQUESTS:
        return WriteVerdict(judgement="acknowledge", reason=f"the message is a {act.act}, not a request")
    if act is None:
        return WriteVerdict(judgement="confirm", reason="no act detector: nothing shows the message asks for a write")
    if act.act == "question":
        return WriteVerdict(judgement="confirm", reason="the message asks about the write, not for it")
    if act.negation_cue is not None:
        return WriteVerdict(judgement="confirm", reason=f"the message declines something ({act.negation_cue!r})")
    if act.confidence < policy.act_gate:
        return WriteVerdict(
            judgement="confirm", reason=f"unsure it is a request (p={act.confidence:.2f} < {policy.act_gate:.2f})"
        )
    if confidence is None or confidence < policy.gate:
        shown = "unmeasured" if confidence is None else f"{confidence:.2f}"
        return WriteVerdict(
            judgement="confirm", reason=f"label confidence {shown} is under the write gate {policy.gate:.2f}"
        )
    if len(set(references)) > 1:
        return WriteVerdict(judgement="which", reason=f"the message names {len(set(references))} possible targets")
    words = count_words(text, references)
    if words < policy.min_words:
        return WriteVerdict(
            judgement="fragment",
            reason=f"the message is a fragment ({words} words besides its identifiers, under {policy.min_words})",
        )
    return WriteVerdict(judgement="write", reason="an explicit request")
