"""Judging a canary: the candidate against the current model on the same traffic, then promote or roll back by rule.

A canary (:meth:`~agentgraph.distill.registry.ModelRegistry.start_canary`) serves a share of a
role's requests with a candidate artifact; the graph serves it with
:func:`~agentgraph.nodes.canary.create_canary`, so each request the candidate served is a
decision carrying the current model's answer to the same input. :func:`canary_figures` reads
the decision log since the canary started and measures, for the candidate's requests and for
the current model's:

- **agreement** of the candidate with the current model on the candidate's requests;
- **teacher agreement**: the shadow comparisons (:mod:`agentgraph.shadow`) of each side's decisions;
- **escalated**: the share of decisions that went past the small model (to the LLM or a person);
- **rejected**: the share of turns, among those the outcome rules (:mod:`agentgraph.records.outcomes`)
  judge, that were rejected: the next request complained, an approval was refused.

:func:`judge_canary` applies a :class:`CanaryRule` to them: before ``min_requests`` it waits; then a
candidate that agrees too little with the current model, falls behind it with the teacher, or
escalates or is rejected more is rolled back, and one that does none of these is promoted. Either
switch is a decision of ``model_registry`` in the log, with the figures.

Example:
    >>> from agentgraph.distill.canary import CanaryFigures, CanaryRule, SideFigures, verdict_of
    >>> figures = CanaryFigures(agreement=0.97, candidate=SideFigures(requests=80, escalated=0.05),
    ...                         current=SideFigures(requests=720, escalated=0.21))
    >>> verdict_of(figures, CanaryRule(min_requests=50))
    ('promote', ['it agrees with the current model on 97.0% of its requests (at least 90.0%)', \
'it escalates 5.0% of its requests, the current model 21.0%', \
'teacher agreement not measured (0 and 0 shadow checks, 20 needed on each side)', \
'outcomes not compared (0 and 0 judged turns, 20 needed on each side)'])
    >>> verdict_of(figures.model_copy(update={"agreement": 0.6}), CanaryRule())[0]
    'rollback'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentgraph.distill.registry import ModelRegistry
from agentgraph.distill.train import DistillError
from agentgraph.records.decisions import Decision, DecisionLog
from agentgraph.records.outcomes import OutcomeRules, judged_turns
from agentgraph.shadow import CANARY_KEY

Verdict = Literal["continue", "promote", "rollback"]


class CanaryRule(BaseModel):
    """When a canary is judged, and what rolls it back (every figure a share between 0 and 1)."""

    min_requests: int = Field(default=50, ge=1, description="candidate requests before any verdict")
    min_agreement: float = Field(default=0.9, ge=0.0, le=1.0, description="with the current model")
    max_teacher_drop: float = Field(default=0.02, ge=0.0, le=1.0,
                                    description="how far its teacher agreement may fall below the current model's")  # fmt: skip
    min_teacher_checks: int = Field(default=20, ge=1, description="shadow checks on each side to compare them")
    max_escalated_rise: float = Field(default=0.05, ge=0.0, le=1.0,
                                      description="how much more of its requests it may escalate")  # fmt: skip
    max_rejected_rise: float = Field(default=0.05, ge=0.0, le=1.0,
                                     description="how much more of its judged turns may be rejected")  # fmt: skip
    min_judged_turns: int = Field(default=20, ge=1, description="judged turns on each side to compare outcomes")


class SideFigures(BaseModel):
    """What one side of the canary (the candidate, or the current model) did since it started."""

    requests: int = 0
    escalated: float | None = Field(default=None, description="share of its decisions escalated")
    teacher_checks: int = 0
    teacher_agreement: float | None = None
    judged_turns: int = 0
    rejected: float | None = Field(default=None, description="share of its judged turns rejected")


class CanaryFigures(BaseModel):
    agreement: float | None = Field(default=None, description="the candidate's with the current model, on its requests")
    errors: int = Field(default=0, description="candidate requests that raised (the current model served them)")
    candidate: SideFigures = Field(default_factory=SideFigures)
    current: SideFigures = Field(default_factory=SideFigures)


class CanaryJudgement(BaseModel):
    role: str
    node: str
    candidate: str
    share: float
    verdict: Verdict
    reasons: list[str]
    figures: CanaryFigures
    applied: bool = Field(description="whether the verdict was carried out (a switch logged); never for continue")


def canary_figures(decisions: Iterable[Decision], *, node: str, candidate: str,
                   outcome_rules: OutcomeRules | None = None) -> CanaryFigures:  # fmt: skip
    """The figures of the canary of ``candidate`` (its label) on ``node``, from ``decisions`` since it started."""
    rules = outcome_rules or OutcomeRules()
    everything = sorted(decisions, key=lambda d: d.timestamp)
    made = [d for d in everything if d.node == node and d.kind not in ("shadow", "outcome") and d.outcome != "rejected"]
    ours = {d.id: d for d in made if (d.metadata.get(CANARY_KEY) or {}).get("candidate") == candidate}
    served = {d.id for d in ours.values() if "error" not in d.metadata[CANARY_KEY]}
    theirs = [d for d in made if d.id not in served]
    checks: dict[bool, list[bool]] = {True: [], False: []}
    for shadow in everything:
        # A shadow record's output is {"student", "teacher", "agree"}; agree is None when the teacher failed.
        if shadow.node == node and shadow.kind == "shadow" and (agree := shadow.output.get("agree")) is not None:
            checks[shadow.metadata.get("shadow_of") in served].append(bool(agree))
    rejected: dict[bool, list[bool]] = {True: [], False: []}
    by_thread: dict[str, list[Decision]] = defaultdict(list)
    for decision in everything:
        if decision.thread_id is not None:
            by_thread[decision.thread_id].append(decision)
    for thread in by_thread.values():
        for turn, verdict in judged_turns(thread, [], rules):
            in_turn = [d for d in (turn.start, *turn.decisions) if d.node == node]
            if in_turn and verdict is not None:
                rejected[any(d.id in served for d in in_turn)].append(not verdict[0])
    return CanaryFigures(
        agreement=_share(d.metadata[CANARY_KEY]["agree"] for d in ours.values()),
        errors=len(ours) - len(served),
        candidate=_side([ours[id] for id in served], checks[True], rejected[True]),
        current=_side(theirs, checks[False], rejected[False]),
    )


def verdict_of(figures: CanaryFigures, rule: CanaryRule) -> tuple[Verdict, list[str]]:
    """What ``rule`` makes of ``figures``, and why."""
    candidate, current = figures.candidate, figures.current
    requests = candidate.requests + figures.errors
    if requests < rule.min_requests:
        return "continue", [f"{requests} candidate requests so far; it is judged after {rule.min_requests}"]
    failures: list[str] = []
    passes: list[str] = []
    agreement = figures.agreement or 0.0
    said = f"it agrees with the current model on {agreement:.1%} of its requests (at least {rule.min_agreement:.1%})"
    (passes if agreement >= rule.min_agreement else failures).append(said)
    if figures.errors:
        failures.append(f"it failed on {figures.errors} of its requests")
    _compare(passes, failures, "escalates", "of its requests", candidate.escalated, current.escalated,
             rule.max_escalated_rise, higher_is_worse=True)  # fmt: skip
    if min(candidate.teacher_checks, current.teacher_checks) >= rule.min_teacher_checks:
        _compare(passes, failures, "agrees with the teacher on", "of the shadow checks", candidate.teacher_agreement,
                 current.teacher_agreement, rule.max_teacher_drop, higher_is_worse=False)  # fmt: skip
    else:
        passes.append(f"teacher agreement not measured ({candidate.teacher_checks} and {current.teacher_checks} "
                      f"shadow checks, {rule.min_teacher_checks} needed on each side)")  # fmt: skip
    if min(candidate.judged_turns, current.judged_turns) >= rule.min_judged_turns:
        _compare(passes, failures, "has rejected", "of its judged turns", candidate.rejected, current.rejected,
                 rule.max_rejected_rise, higher_is_worse=True)  # fmt: skip
    else:
        passes.append(f"outcomes not compared ({candidate.judged_turns} and {current.judged_turns} judged turns, "
                      f"{rule.min_judged_turns} needed on each side)")  # fmt: skip
    return ("rollback", failures) if failures else ("promote", passes)


def judge_canary(
    registry: ModelRegistry,
    decision_log: DecisionLog,
    role: str,
    *,
    node: str | None = None,
    rule: CanaryRule | None = None,
    outcome_rules: OutcomeRules | None = None,
    apply: bool = True,
) -> CanaryJudgement:
    """Judge ``role``'s canary on the decisions of ``node`` (default: the role's name) in ``decision_log``
    since it started, and, unless ``apply`` is False, promote its candidate or roll it back by the verdict."""
    canary = registry.canary(role)
    if canary is None:
        raise DistillError(f"{registry} has no canary running for {role!r}: start one with `agentgraph models canary`")
    node = node or role
    since = datetime.fromisoformat(canary.started_at)
    figures = canary_figures((d for d in decision_log.decisions() if d.timestamp >= since), node=node,
                             candidate=canary.entry.path, outcome_rules=outcome_rules)  # fmt: skip
    verdict, reasons = verdict_of(figures, rule or CanaryRule())
    applied = apply and verdict != "continue"
    if applied:
        registry.end_canary(role, promote=verdict == "promote", reason=f"canary: {'; '.join(reasons)}",
                            figures=figures.model_dump())  # fmt: skip
    return CanaryJudgement(role=role, node=node, candidate=canary.entry.path, share=canary.share, verdict=verdict,
                           reasons=reasons, figures=figures, applied=applied)  # fmt: skip


def _share(values: Iterable[Any]) -> float | None:
    flags = [bool(value) for value in values]
    return sum(flags) / len(flags) if flags else None


def _side(decisions: list[Decision], checks: list[bool], rejected: list[bool]) -> SideFigures:
    return SideFigures(
        requests=len(decisions), escalated=_share(d.escalated for d in decisions), teacher_checks=len(checks),
        teacher_agreement=_share(checks), judged_turns=len(rejected), rejected=_share(rejected),
    )  # fmt: skip


def _compare(passes: list[str], failures: list[str], verb: str, of_what: str, candidate: float | None,
             current: float | None, tolerance: float, *, higher_is_worse: bool) -> None:  # fmt: skip
    if candidate is None or current is None:
        return
    worse_by = (candidate - current) if higher_is_worse else (current - candidate)
    said = f"it {verb} {candidate:.1%} {of_what}, the current model {current:.1%}"
    if worse_by > tolerance:
        failures.append(f"{said} (more than {tolerance:.1%} worse)")
    else:
        passes.append(said)
