"""Outcomes without a person: label the LLM's traced calls from what came of the turn that made them.

Distillation learns from accepted teacher answers (``agentgraph distill dataset
--traces``), and a call has no outcome until something gives it one. Where the
graph's own records hold a signal, :func:`label_outcomes` gives it by rule, per
turn of a thread (a turn starts at the router's ``route`` decision and holds
the decisions and calls until the next one):

- ``complaint``: the next turn corrects or complains (its request matches
  :attr:`OutcomeRules.complaint_pattern`): the turn's calls are rejected, even
  ones another rule accepted;
- ``approval``: a person approved a write the turn asked for (accepted), or
  edited or rejected it (rejected);
- ``answered_clarification``: the customer answered the turn's clarifying
  question (the next turn's route decision reads as its answer): accepted;
- ``validated``: the turn's output validator passed it and nothing was handed to
  a person: accepted.

Each label is a :class:`~agentgraph.records.decisions.Decision` of node
``outcome_rules`` (kind ``outcome``) naming the call and the rule; a call a
person judged (a decision of node ``trace_review``), or one marked from code,
keeps that judgement. What no rule settles stays
pending, for ``agentgraph traces review``.

Example:
    >>> from agentgraph.records.decisions import Decision
    >>> from agentgraph.records.outcomes import label_outcomes
    >>> from agentgraph.records.traces import LLMCall, SQLiteTraceStore
    >>> store = SQLiteTraceStore(":memory:")
    >>> _ = store.record(Decision(node="router", kind="route", input="hi, where is 10001?", thread_id="t1"))
    >>> _ = store.record_call(LLMCall(node="extract", messages=[{"role": "user", "content": "where is 10001?"}],
    ...                               output="{}", thread_id="t1"))
    >>> _ = store.record(Decision(node="validate", kind="validate", input="...", outcome="ok", thread_id="t1"))
    >>> _ = store.record(Decision(node="router", kind="route", input="that is wrong, I said 10002", thread_id="t1"))
    >>> report = label_outcomes(store)
    >>> report.rejected, report.accepted, [call.accepted for call in store.calls()]
    (1, 0, [False])
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentgraph.records.decisions import Decision
from agentgraph.records.traces import LLMCall, SQLTraceStore

RULES_NODE = "outcome_rules"
REVIEW_NODE = "trace_review"
"""The decision logs' names for a label given by rule and one given by a person (``agentgraph traces review``)."""

Rule = Literal["complaint", "approval", "answered_clarification", "validated"]

DEFAULT_COMPLAINT_PATTERN = (
    r"\b(wrong|incorrect|not (?:what|right|correct|it)|that'?s not|you (?:got|misunderstood)|i (?:said|meant|asked)|"
    r"(?:doesn'?t|didn'?t|does not|did not) (?:help|work|answer)|useless|complain\w*|mistake)\b"
)


class OutcomeRules(BaseModel):
    """Which signals label a turn's calls; each rule can be turned off, the complaint cue replaced."""

    complaint: bool = True
    approval: bool = True
    answered_clarification: bool = True
    validated: bool = True
    complaint_pattern: str = Field(default=DEFAULT_COMPLAINT_PATTERN,
                                   description="a regular expression (case-insensitive) a correcting or complaining "
                                   "next request matches")  # fmt: skip
    turn_kind: str = Field(default="route", description="the decision kind a turn starts with")


class OutcomeReport(BaseModel):
    threads: int = 0
    turns: int = 0
    accepted: int = 0
    rejected: int = 0
    pending: int = Field(default=0, description="calls no rule settled, left for review")
    by_rule: dict[str, int] = Field(default_factory=dict)


@dataclass
class Turn:
    """One turn of a thread: the decision it starts with, the decisions and the LLM calls until the next."""

    start: Decision
    decisions: list[Decision] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)


def turns_of(decisions: Sequence[Decision], calls: Sequence[LLMCall], *, turn_kind: str = "route") -> list[Turn]:
    """A thread's decisions and calls (each in time order) cut into turns; what comes before the first is dropped."""
    turns: list[Turn] = []
    for decision in decisions:
        if decision.kind == turn_kind:
            turns.append(Turn(decision))
        elif turns:
            turns[-1].decisions.append(decision)
    # A decision is stamped when it is made; its turn began when the node started (a teacher's call comes first).
    starts = [turn.start.timestamp - timedelta(milliseconds=turn.start.latency_ms) for turn in turns]
    for call in calls:
        at = sum(start <= call.timestamp for start in starts) - 1
        if at >= 0:
            turns[at].calls.append(call)
    return turns


def verdict_of(turn: Turn, following: Turn | None, rules: OutcomeRules) -> tuple[bool, Rule] | None:
    """What the rules make of a turn: (accepted, the rule that said so), or None when none applies."""
    next_request = _text(following.start.input) if following is not None else None
    if rules.complaint and next_request is not None and re.search(rules.complaint_pattern, next_request, re.IGNORECASE):
        return False, "complaint"
    approvals = [d.metadata.get("approval") for d in turn.decisions if d.metadata.get("approval")]
    if rules.approval and approvals:
        return all(answer == "approve" for answer in approvals), "approval"
    if rules.answered_clarification and following is not None and "answers" in following.start.metadata:
        return True, "answered_clarification"
    validations = [d for d in turn.decisions if d.kind == "validate"]
    handed_off = any(d.outcome == "handoff" or d.strategy == "human" for d in turn.decisions)
    if rules.validated and validations and not handed_off and all(d.outcome != "flagged" for d in validations):
        return True, "validated"
    return None


def judged_turns(
    decisions: Sequence[Decision], calls: Sequence[LLMCall], rules: OutcomeRules
) -> list[tuple[Turn, tuple[bool, Rule] | None]]:
    """One thread's turns (its decisions and calls in time order, :func:`turns_of`), each with its verdict."""
    turns = turns_of(decisions, calls, turn_kind=rules.turn_kind)
    following = [*turns[1:], None]
    return [(turn, verdict_of(turn, after, rules)) for turn, after in zip(turns, following, strict=True)]


def label_outcomes(store: SQLTraceStore, rules: OutcomeRules | None = None) -> OutcomeReport:
    """Label the pending LLM calls in ``store`` by ``rules`` (default: all of them); returns what was labelled.

    A call labelled by an earlier run may be relabelled rejected by a complaint that came since;
    calls a person judged (``agentgraph traces review``) are never touched.
    """
    rules = rules or OutcomeRules()
    ruled = {d.input["call_id"]: d for d in store.decisions(node=RULES_NODE, kind="outcome")}
    reviewed = {d.input["call_id"] for d in store.decisions(node=REVIEW_NODE, kind="outcome")}
    open_calls = {
        call.id: call
        for call in store.calls()
        if call.id not in reviewed and (call.accepted is None or call.id in ruled)
    }
    threads = {call.thread_id for call in open_calls.values() if call.thread_id is not None}
    report = OutcomeReport(threads=len(threads))
    for turns in _judged_threads(store, list(open_calls.values()), rules, threads=threads):
        report.turns += len(turns)
        for turn, verdict in turns:
            for call in turn.calls:
                if verdict is None:
                    report.pending += call.accepted is None
                    continue
                earlier = ruled.get(call.id)
                if earlier is not None and earlier.output == verdict[0]:
                    continue
                accepted, rule = verdict
                store.mark(call.id, accepted=accepted)
                store.record(_outcome_decision(call, accepted, rule, turn))
                report.accepted += accepted
                report.rejected += not accepted
                report.by_rule[rule] = report.by_rule.get(rule, 0) + 1
    return report


def accepted_turns(store: SQLTraceStore, rules: OutcomeRules | None = None) -> list[tuple[Turn, Rule]]:
    """Every turn in ``store`` whose outcome ``rules`` accept, with the rule that accepts it.

    :func:`label_outcomes` labels the teacher's calls; these are all the accepted turns, the ones the small
    models decided alone included. A retrained model can learn from those too (its own routes that served
    well), and with the teacher's they make a sample of the traffic as it was served: a model's gate fitted
    on the teacher's answers alone sees only the requests its predecessor found hard.
    """
    rules = rules or OutcomeRules()
    return [
        (turn, verdict[1])
        for turns in _judged_threads(store, list(store.calls()), rules)
        for turn, verdict in turns
        if verdict is not None and verdict[0]
    ]


def _judged_threads(
    store: SQLTraceStore, calls: Sequence[LLMCall], rules: OutcomeRules, *, threads: Collection[str] | None = None
) -> Iterator[list[tuple[Turn, tuple[bool, Rule] | None]]]:
    """The judged turns of each thread in ``store`` (of ``threads``, when given), with ``calls`` among them."""
    decisions: dict[str, list[Decision]] = defaultdict(list)
    for decision in store.decisions():
        if decision.thread_id is not None and (threads is None or decision.thread_id in threads):
            decisions[decision.thread_id].append(decision)
    thread_calls: dict[str, list[LLMCall]] = defaultdict(list)
    for call in calls:
        if call.thread_id is not None:
            thread_calls[call.thread_id].append(call)
    for thread in sorted(decisions):
        yield judged_turns(
            sorted(decisions[thread], key=lambda d: d.timestamp),
            sorted(thread_calls[thread], key=lambda c: c.timestamp),
            rules,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _outcome_decision(call: LLMCall, accepted: bool, rule: Rule, turn: Turn) -> Decision:
    return Decision(
        node=RULES_NODE, kind="outcome", input={"call_id": call.id, "node": call.node, "step_type": call.step_type},
        output=accepted, strategy=rule, outcome="accepted" if accepted else "rejected", thread_id=call.thread_id,
        metadata={"turn_started": turn.start.timestamp.isoformat(), "turn_input": _text(turn.start.input)},
    )  # fmt: skip
