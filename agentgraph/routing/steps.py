"""Requests that ask for several things at once: their clauses, each read by the router, for a planning route.

"cancel 48213 and tell me when 10001 arrives" is two requests. A
:class:`~agentgraph.routing.router.Router` given a :class:`StepPolicy` splits
a message at its separators ("and", "then", "also", ";", a new sentence),
routes every clause with its strategies, and, when at least two clauses are
read confidently as different requests (:func:`distinct_requests`), sends the message to the policy's
``route`` (a planning path) with the :class:`RecognisedStep` of each clause
instead of serving one label of it.

The rule stays on the safe side: one clause the strategies cannot read
confidently, or one that is a statement, a refusal or a greeting, and the
message is routed whole, as before. A write clause carries the customer's
consent only when the write rule (:mod:`agentgraph.write_safety`) allows it for
that clause; a clause too short on its own ("cancel 48213") is judged with the
words of the whole message, which is what shows the customer asks.

Example:
    >>> from agentgraph.routing import Router, RuleStrategy
    >>> from agentgraph.routing.steps import StepPolicy
    >>> StepPolicy().clauses("cancel order 48213 and then tell me when 10001 arrives. thanks")
    ['cancel order 48213', 'tell me when 10001 arrives']
    >>> router = Router(
    ...     [RuleStrategy({r"\\bcancel\\b": "cancel_order", r"\\barrive": "delivery_period"})],
    ...     routes={"cancel_order": "action", "delivery_period": "lookup"}, steps=StepPolicy(route="plan"),
    ... )
    >>> verdict = router.decide("cancel order 48213 and tell me when 10001 arrives")
    >>> verdict.route, [(step.label, step.text) for step in verdict.steps]
    ('plan', [('cancel_order', 'cancel order 48213'), ('delivery_period', 'tell me when 10001 arrives')])
    >>> router.decide("cancel order 48213 and order 10001").route  # "order 10001" asks nothing: served whole
    'action'
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from agentgraph.write_safety import WriteConsent, WriteVerdict

STEP_SEPARATORS = (
    r"\s*[,;]?\s*\b(?:and then|and also|and|then|also|plus|after that|afterwards)\b\s*"
    r"|\s*;\s*"
    r"|(?<=[.!?])(?<!\bMr\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bMrs\.)(?<!\be\.g\.)(?<!\bi\.e\.)\s+"
)
"""Where one request of a message ends and the next begins (case-insensitive): a joining word, a semicolon, or
the end of a sentence (not of "Mr.", "e.g." and the like)."""


class StepPolicy(BaseModel):
    """How a router recognises a message that asks for several things, and where it sends one."""

    route: str = Field(default="plan", description="the route of a multi-step request")
    separators: str = Field(default=STEP_SEPARATORS, description="a regular expression between clauses")
    min_words: int = Field(default=2, ge=1, description="shorter pieces ('thanks', 'pls') are no clause")
    max_steps: int = Field(default=6, ge=2, description="more clauses than this: the message is routed whole")

    def clauses(self, text: str) -> list[str]:
        """The clauses of ``text``, in order, without the pieces under ``min_words`` words."""
        # Whitespace collapsed first: a run of it would make the separators' optional spaces backtrack for ages.
        collapsed = " ".join(text.split())
        pieces = (piece.strip(" ,.;:!?") for piece in re.split(self.separators, collapsed, flags=re.IGNORECASE))
        return [piece for piece in pieces if len(piece.split()) >= self.min_words]


class RecognisedStep(BaseModel):
    """One clause of a multi-step request, as the router read it."""

    text: str = Field(description="the customer's own words of this step")
    label: str
    route: str
    confidence: float | None
    strategy: str
    references: list[str] = Field(default_factory=list, description="the identifiers the clause names")
    consent: WriteConsent | None = Field(default=None, description="the customer's consent, for a write label")
    write: WriteVerdict | None = Field(default=None, description="the write rule's verdict, for a write label")


def distinct_requests(steps: list[RecognisedStep]) -> int:
    """How many different requests ``steps`` make: clauses of one label are one request, unless they name
    different identifiers ("track 10001 and track 48213" is two; "change my address, the address of 48213" one)."""
    targets: dict[str, set[tuple[str, ...]]] = {}
    for step in steps:
        targets.setdefault(step.label, set()).add(tuple(step.references))
    return sum(max(1, len({refs for refs in named if refs})) for named in targets.values())
