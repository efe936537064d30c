"""What the router does once it has read a label: ask, acknowledge, route, and keep writes to what was asked for.

:class:`RequestPolicy` sits between the router's label (its strategies and
gate) and the route it returns. With an :class:`~agentgraph.acts.ActDetector`,
a :class:`~agentgraph.write_safety.WritePolicy` and a
:class:`~agentgraph.clarification.ClarificationPolicy` it decides, for one
message:

- a bare reference ("order no 55102") gets a question offering the actions a
  reference can have;
- a greeting is greeted, thanks and other social messages are acknowledged;
- a statement or a refusal is acknowledged (a statement about something read,
  "parcel still not here", is offered that read), never served;
- a write label goes through the write-safety rule
  (:func:`~agentgraph.write_safety.judge_write`): it runs with the customer's
  :class:`~agentgraph.write_safety.WriteConsent`, is confirmed first, asks
  which target, or is only acknowledged;
- a request the gate left unsure between a few labels whose probabilities
  together reach it gets a question offering them; otherwise it escalates;
- the answer to a pending question is read with the question's context
  (:meth:`~agentgraph.clarification.ClarificationPolicy.resolve`).

Each part is optional: without an act detector nothing is acknowledged and
every write is confirmed; without a clarification policy nothing is asked and
an unsure request escalates, as a plain router does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentgraph.acts import ActDetector, ActVerdict
from agentgraph.clarification import Clarification, ClarificationPolicy, ClarifiedRequest
from agentgraph.classifier import OUT_OF_SCOPE
from agentgraph.write_safety import WriteConsent, WritePolicy, WriteVerdict, judge_write

CANDIDATE_FLOOR = 0.1
"""A label offered in a clarifying question has at least this probability: a question never lists long shots."""


@dataclass(frozen=True)
class PolicyOutcome:
    """The route the policy settles on: a label to serve, or a question to ask, or None to escalate."""

    label: str | None = None
    text: str | None = None
    clarification: Clarification | None = None
    consent: WriteConsent | None = None
    write: WriteVerdict | None = None
    outcome: str = "routed"


ESCALATION = PolicyOutcome(outcome="escalated")
"""No route the policy can serve: the router escalates (or, in auto mode, asks its teacher)."""


class RequestPolicy:
    """The act detector, the write rule and the clarifying questions a router applies to its labels."""

    def __init__(
        self,
        *,
        acts: ActDetector | None = None,
        writes: WritePolicy | None = None,
        clarification: ClarificationPolicy | None = None,
    ) -> None:
        self.acts = acts
        self.writes = writes
        self.clarification = clarification

    @property
    def clarify_route(self) -> str | None:
        return self.clarification.route if self.clarification is not None else None

    def act_of(self, text: str) -> ActVerdict | None:
        return self.acts.detect(text) if self.acts is not None else None

    def references(self, text: str) -> list[str]:
        """The identifiers ``text`` names (none without a clarification policy, which says what one looks like)."""
        return self.clarification.references(text) if self.clarification is not None else []

    def answer(
        self, pending: Clarification, text: str, *, best_label: str | None, act: ActVerdict | None
    ) -> PolicyOutcome | None:
        """``text`` as the answer to ``pending``, or None when it is not one (it is then routed on its own).

        An answer that names a write but declines something ("don't cancel it!") agrees to nothing.
        """
        clarification = self.clarification
        if clarification is None or not pending.awaits_answer:
            return None
        resolved = clarification.resolve(pending, text, best_label=best_label)
        if resolved is None:
            return None
        if isinstance(resolved, Clarification):
            return PolicyOutcome(clarification=resolved, outcome="declined")
        declines = clarification.says_no(text) or (act is not None and (act.act == "negation" or act.negation_cue))
        if declines and self.writes is not None and self.writes.writes(resolved.label):
            return PolicyOutcome(clarification=clarification.declined(request=pending.request), outcome="declined")
        return self._serve_answer(resolved, clarification)

    def _serve_answer(self, resolved: ClarifiedRequest, clarification: ClarificationPolicy) -> PolicyOutcome:
        if self.writes is None or not self.writes.writes(resolved.label):
            return PolicyOutcome(label=resolved.label, text=resolved.text, outcome="clarified_answer")
        if resolved.consent is None:
            # A target named in answer to a question the write was not yet agreed to: ask before writing.
            return self._ask(clarification.confirm(resolved.label, request=resolved.text))
        consent = WriteConsent(label=resolved.label, how=resolved.consent, request=resolved.text)
        return PolicyOutcome(label=resolved.label, text=resolved.text, consent=consent, outcome="clarified_answer")

    def decide(
        self,
        text: str,
        *,
        act: ActVerdict | None,
        label: str | None,
        confidence: float | None,
        accepted: bool,
        out_of_scope: bool,
        top: Mapping[str, float],
        gate: float,
    ) -> PolicyOutcome:
        """The route for ``text``, given the router's verdict on it: ``label`` (accepted at ``gate`` or not)."""
        clarification = self.clarification
        if clarification is not None and clarification.is_reference_only(text) and clarification.reference_candidates:
            return self._ask(clarification.choose(clarification.reference_candidates, request=text))
        confident_act = act is not None and (self.writes is None or act.confidence >= self.writes.act_gate)
        # A message the router reads as one of its labels is no mere greeting ("hi, where is my order?").
        if clarification is not None and act is not None and act.act == "social" and confident_act and not accepted:
            return self._ask(clarification.greet(request=text) if clarification.is_greeting(text)
                             else clarification.acknowledge(None, request=text, declined=False, offer=False))  # fmt: skip
        if out_of_scope:
            return ESCALATION
        if clarification is not None and act is not None and act.act in ("statement", "negation") and confident_act:
            offer = accepted and act.act == "statement" and not (self.writes and self.writes.writes(label))
            return self._ask(clarification.acknowledge(label if accepted else None, request=text,
                                                       declined=act.act == "negation", offer=offer))  # fmt: skip
        if accepted and label is not None:
            if self.writes is not None and self.writes.writes(label):
                return self._write(self.writes, text, label, confidence, act, top)
            return PolicyOutcome(label=label, text=text)
        if clarification is not None and (
            candidates := candidate_set(top, gate, max_candidates=clarification.max_candidates)
        ):
            return self._ask(clarification.choose(candidates, request=text))
        return ESCALATION

    def _write(
        self,
        writes: WritePolicy,
        text: str,
        label: str,
        confidence: float | None,
        act: ActVerdict | None,
        top: Mapping[str, float],
    ) -> PolicyOutcome:
        clarification = self.clarification
        references = self.references(text)
        verdict = judge_write(writes, text, confidence=confidence, act=act, references=references)
        if verdict.judgement == "write":
            return PolicyOutcome(label=label, text=text, write=verdict,
                                 consent=WriteConsent(label=label, how="requested", request=text))  # fmt: skip
        if clarification is None:
            # Nobody to ask: a write that may not run unasked is handed on rather than run.
            return PolicyOutcome(write=verdict, outcome="escalated")
        if verdict.judgement == "which":
            question = clarification.which(label, request=text, consent=True, options=references)
        elif (
            verdict.judgement == "fragment" and len(offered := plausible(top, label, clarification.max_candidates)) > 1
        ):
            # "refund" may ask for one, after one, or about the policy: offer what it plausibly means.
            question = clarification.choose(offered, request=text)
        elif verdict.judgement in ("confirm", "fragment"):
            question = clarification.confirm(label, request=text)
        else:
            question = clarification.acknowledge(label, request=text, declined=act is not None and act.act == "negation",
                                                 offer=False)  # fmt: skip
        return PolicyOutcome(clarification=question, write=verdict, outcome=f"clarified_{question.kind}")

    @staticmethod
    def _ask(question: Clarification) -> PolicyOutcome:
        return PolicyOutcome(clarification=question, outcome=f"clarified_{question.kind}")


def ranked(top: Mapping[str, float]) -> list[tuple[float, str]]:
    """``(probability, label)`` of the labels a question may offer, most probable first: the out-of-scope class
    never, nor a label under :data:`CANDIDATE_FLOOR`."""
    return sorted(
        ((p, label) for label, p in top.items() if label != OUT_OF_SCOPE and p >= CANDIDATE_FLOOR), reverse=True
    )


def plausible(top: Mapping[str, float], label: str, max_candidates: int) -> list[str]:
    """``label`` and the other labels a question may offer, most probable first."""
    return [label, *(other for _, other in ranked(top) if other != label)][:max_candidates]


def candidate_set(top: Mapping[str, float], gate: float, *, max_candidates: int = 3) -> list[str]:
    """The fewest labels (two or more, ``max_candidates`` at most) whose probabilities together reach ``gate``.

    Only the labels a question may offer count (:func:`ranked`); an empty list when no such set reaches the gate.

    Example:
        >>> candidate_set({"get_refund": 0.48, "track_refund": 0.41, "complaint": 0.05}, 0.8)
        ['get_refund', 'track_refund']
        >>> candidate_set({"get_refund": 0.40, "complaint": 0.08}, 0.8)
        []
    """
    offered = ranked(top)[:max_candidates]
    total = 0.0
    for count, (probability, _) in enumerate(offered, start=1):
        total += probability
        if count >= 2 and total >= gate:
            return [label for _, label in offered[:count]]
    return []
