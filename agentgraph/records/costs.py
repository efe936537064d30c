"""What the control layer cost, and what sending every step to the frontier model would have cost.

A :class:`PriceTable` prices the LLM per model ($ per 1M input and output
tokens) and the local SLM by the hour of its machine, or by its tokens. :func:`cost_report` reads a
trace store:

- the LLM's actual cost: every traced call's tokens at its model's price;
- the SLM's actual cost: the time of the decisions a small model made at the machine's
  hourly price, or, with ``slm`` in the table, the tokens the SLM read and wrote for them
  (decisions by a classifier have none). Decisions made side by side (concurrent requests
  batched on one machine) share the time they overlap (:func:`machine_shares`): the machine is
  paid once for each second it was busy;
- the all-LLM baseline: every decision of a step the teacher can take (a
  ``route``, an ``extract``, a ``classify_tool``, ...) priced as one teacher
  call of that step type, with the mean token counts the store's traced
  teacher calls of that step type show (or the table's ``step_tokens``), plus
  the calls no small model replaces (escalations, plans) at their cost;
- both per node and per route (a turn starts at a ``route`` decision; its
  cost is that of its decisions and calls);
- the LLM's calls and cost per tier (``efficient``, ``frontier``, ``reasoning``: see
  :mod:`agentgraph.tiers`), each with its share of the calls and of the LLM's cost.

Example:
    >>> from agentgraph.records.costs import ModelPrice, PriceTable, cost_report
    >>> from agentgraph.records.decisions import Decision
    >>> from agentgraph.records.traces import LLMCall, SQLiteTraceStore
    >>> store = SQLiteTraceStore(":memory:")
    >>> _ = store.record_call(LLMCall(step_type="route", node="router", messages=[], model="big",
    ...                               prompt_tokens=300, completion_tokens=10))
    >>> for _ in range(9):
    ...     store.record(Decision(node="router", kind="route", input="...", strategy="classifier", model="clf",
    ...                           output={"route": "lookup"}, latency_ms=3.0))
    >>> prices = PriceTable(llm={"big": ModelPrice(input=3.0, output=15.0)}, slm_per_hour=1.0)
    >>> report = cost_report(store, prices)
    >>> round(report.llm_cost, 6), round(report.baseline_cost, 6), report.small_model_decisions
    (0.00105, 0.00945, 9)
    >>> report.by_tier["untiered"].llm_calls  # a call made outside the tiers
    1
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from agentgraph.errors import ConfigError
from agentgraph.records.decisions import Decision
from agentgraph.records.traces import LLMCall, SQLTraceStore

LLM_STRATEGIES = frozenset({"llm", "human", "handoff"})
"""Decision strategies that are not a small model's work: the LLM's, a person's, a handoff."""

PRICES_ENV = "AGENTGRAPH_PRICES"


class ModelPrice(BaseModel):
    """$ per 1M tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)

    def of(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


class StepTokens(BaseModel):
    """What one teacher call of a step type takes, in tokens."""

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


class PriceTable(BaseModel):
    """Prices for :func:`cost_report`, from code or a JSON file (``--prices``, ``AGENTGRAPH_PRICES``).

    ``llm`` maps model names to their price; ``default`` prices a model not listed (and the
    baseline's teacher). ``slm_per_hour`` is what the small model's machine costs an hour; ``slm``, when
    set, prices the SLM by its tokens instead (a hosted small model, or a machine shared by many).
    ``step_tokens`` sets a step type's teacher call where the store has no traced one to measure.
    """

    llm: dict[str, ModelPrice] = Field(default_factory=dict)
    default: ModelPrice | None = None
    slm_per_hour: float = Field(default=0.0, ge=0)
    slm: ModelPrice | None = Field(default=None, description="$ per 1M SLM tokens; None: by the hour")
    step_tokens: dict[str, StepTokens] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PriceTable:
        """The table in ``path`` (default: ``$AGENTGRAPH_PRICES``); :class:`ConfigError` when there is none."""
        location = path or os.environ.get(PRICES_ENV)
        if not location:
            raise ConfigError(f"give a price table: a JSON file as --prices or in {PRICES_ENV}")
        try:
            return cls.model_validate_json(Path(location).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the price table {location} cannot be read: {exc}") from exc

    def price_of(self, model: str | None) -> ModelPrice:
        price = self.llm.get(model or "", self.default)
        if price is None:
            listed = ", ".join(sorted(self.llm)) or "none"
            raise ConfigError(f"no price for the LLM {model!r} (listed: {listed}); add it, or a default")
        return price

    @property
    def teacher_price(self) -> ModelPrice:
        """The baseline's teacher: ``default``, else the one model listed."""
        if self.default is not None:
            return self.default
        if len(self.llm) == 1:
            return next(iter(self.llm.values()))
        raise ConfigError("the all-LLM baseline needs the teacher's price: set default in the price table")


class CostLine(BaseModel):
    """The cost of one node's or one route's work."""

    decisions: int = 0
    small_model_decisions: int = 0
    llm_calls: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cost: float = 0.0
    slm_prompt_tokens: int = 0
    slm_completion_tokens: int = 0
    slm_cost: float = 0.0
    baseline_cost: float = 0.0

    @property
    def cost(self) -> float:
        return self.llm_cost + self.slm_cost


TIER_ORDER = ("efficient", "frontier", "reasoning")
"""The tiers cheapest first, as :data:`agentgraph.tiers.TIERS` (the records sit below that module: no import)."""
UNTIERED = "untiered"
"""The :attr:`CostReport.by_tier` key of the calls made outside the tiers (no tier recorded)."""


class TierShare(BaseModel):
    """The LLM calls of one tier, their cost, and their share of all the calls and of the LLM's cost."""

    llm_calls: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cost: float = 0.0
    call_share: float = Field(default=0.0, description="of all LLM calls, 0 to 1")
    cost_share: float = Field(default=0.0, description="of the LLM's cost, 0 to 1")


class CostReport(BaseModel):
    llm_cost: float
    slm_cost: float
    slm_prompt_tokens: int = Field(default=0, description="what the SLM read for its decisions")
    slm_completion_tokens: int = Field(default=0, description="what the SLM wrote")
    baseline_cost: float = Field(description="every teachable step sent to the teacher, the rest as it was")
    saving: float = Field(description="baseline_cost minus what it cost")
    small_model_decisions: int
    llm_calls: int
    teacher_step_tokens: dict[str, StepTokens] = Field(description="what one teacher call of each step type took")
    unpriced_steps: dict[str, int] = Field(
        description="small-model decisions of step types with no teacher call to price them by (left out)"
    )
    by_node: dict[str, CostLine]
    by_route: dict[str, CostLine]
    by_tier: dict[str, TierShare] = Field(
        default_factory=dict, description=f"LLM calls per tier ({UNTIERED!r}: made outside the tiers)"
    )


def teacher_step_tokens(calls: Iterable[LLMCall]) -> dict[str, StepTokens]:
    """The mean prompt and completion tokens of the traced calls of each step type (calls with counts only)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for call in calls:
        if call.step_type and call.prompt_tokens is not None and call.completion_tokens is not None:
            total = sums[call.step_type]
            total[0] += call.prompt_tokens
            total[1] += call.completion_tokens
            total[2] += 1
    return {step: StepTokens(prompt=p / n, completion=c / n) for step, (p, c, n) in sums.items()}


def cost_report(store: SQLTraceStore, prices: PriceTable) -> CostReport:
    """Actual cost, by node and by route, against the all-LLM baseline, from ``store``'s records.

    Shadow checks and outcome labels are bookkeeping, not serving: they are left out.
    """
    calls = list(store.calls())
    decisions = [d for d in store.decisions() if d.kind not in ("shadow", "outcome", "promote", "rollback", "canary")]
    steps = {**teacher_step_tokens(calls), **prices.step_tokens}
    decided_steps = {d.kind for d in decisions}
    teacher = prices.teacher_price
    by_node: dict[str, CostLine] = defaultdict(CostLine)
    by_route: dict[str, CostLine] = defaultdict(CostLine)
    by_tier: dict[str, TierShare] = defaultdict(TierShare)
    route_of_thread: dict[str | None, str] = {}
    unpriced: dict[str, int] = defaultdict(int)
    events: list[Decision | LLMCall] = [*decisions, *calls]
    small_decisions = [d for d in decisions if _is_small(d)]
    machine_ms = dict(zip(map(id, small_decisions), machine_shares(small_decisions), strict=True))
    for event in sorted(events, key=_started):
        if isinstance(event, Decision) and event.kind == "route" and isinstance(event.output, dict):
            route_of_thread[event.thread_id] = str(event.output.get("route"))
        lines = [by_node[event.node or "?"], by_route[route_of_thread.get(event.thread_id, "before a route")]]
        if isinstance(event, LLMCall):
            prompt, completion = event.prompt_tokens or 0, event.completion_tokens or 0
            cost = prices.price_of(event.model).of(prompt, completion)
            replaced = event.step_type in decided_steps  # the call was (part of) a decision the baseline prices
            tier = by_tier[event.tier or UNTIERED]
            tier.llm_calls += 1
            tier.llm_prompt_tokens += prompt
            tier.llm_completion_tokens += completion
            tier.llm_cost += cost
            for line in lines:
                line.llm_calls += 1
                line.llm_prompt_tokens += prompt
                line.llm_completion_tokens += completion
                line.llm_cost += cost
                line.baseline_cost += 0.0 if replaced else cost  # a teachable step is priced once, by its decision
            continue
        small = _is_small(event)
        step = steps.get(event.kind)
        for line in lines:
            line.decisions += 1
            line.small_model_decisions += small
            line.slm_prompt_tokens += event.prompt_tokens or 0
            line.slm_completion_tokens += event.completion_tokens or 0
            line.slm_cost += _slm_cost(event, machine_ms.get(id(event), 0.0), prices) if small else 0.0
            line.baseline_cost += teacher.of(step.prompt, step.completion) if step is not None else 0.0
        if small and step is None:
            unpriced[event.kind] += 1
    total = CostLine()
    for line in by_node.values():
        for name in ("llm_cost", "slm_cost", "baseline_cost", "small_model_decisions", "llm_calls",
                     "slm_prompt_tokens", "slm_completion_tokens"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(line, name))
    for tier in by_tier.values():
        tier.call_share = tier.llm_calls / total.llm_calls
        tier.cost_share = tier.llm_cost / total.llm_cost if total.llm_cost else 0.0
    return CostReport(
        slm_prompt_tokens=total.slm_prompt_tokens, slm_completion_tokens=total.slm_completion_tokens,
        llm_cost=total.llm_cost, slm_cost=total.slm_cost, baseline_cost=total.baseline_cost,
        saving=total.baseline_cost - total.cost, small_model_decisions=total.small_model_decisions,
        llm_calls=total.llm_calls, teacher_step_tokens=steps, unpriced_steps=dict(unpriced),
        by_node=dict(by_node), by_route=dict(by_route), by_tier=dict(by_tier),
    )  # fmt: skip


def _is_small(decision: Decision) -> bool:
    return decision.strategy not in LLM_STRATEGIES and decision.model is not None


def _slm_cost(decision: Decision, machine_ms: float, prices: PriceTable) -> float:
    if prices.slm is not None:
        return prices.slm.of(decision.prompt_tokens or 0, decision.completion_tokens or 0)
    return machine_ms / 3.6e6 * prices.slm_per_hour


def machine_shares(decisions: Sequence[Decision]) -> list[float]:
    """Each decision's share of its machine's busy time, in ms: an instant that k decisions span counts 1/k to each.

    The shares sum to the time the machine was busy (the union of the decisions' spans). One at a time, a
    share is the decision's latency; sixteen requests served side by side are not paid sixteen times. The
    decisions are taken to run on one machine (one serving process, or several on one host).

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> at = datetime(2026, 12, 1, tzinfo=UTC)
        >>> made = lambda end_ms, ms: Decision(node="n", kind="k", input="", latency_ms=ms,
        ...                                   timestamp=at + timedelta(milliseconds=end_ms))
        >>> machine_shares([made(100, 100), made(150, 100), made(400, 50)])  # two overlap by 50 ms
        [75.0, 75.0, 50.0]
    """
    edges = sorted(
        (moment, opens, index)
        for index, decision in enumerate(decisions)
        for moment, opens in ((_started(decision), True), (decision.timestamp, False))
    )
    shares = [0.0] * len(decisions)
    running: set[int] = set()
    previous: datetime | None = None
    for moment, opens, index in edges:
        if running and previous is not None:
            each = (moment - previous) / timedelta(milliseconds=1) / len(running)
            for other in running:
                shares[other] += each
        previous = moment
        if opens:
            running.add(index)
        else:
            running.discard(index)
    return shares


def _started(event: Decision | LLMCall) -> datetime:
    # A decision is stamped when made; it began latency_ms before (a teacher's call inside it comes after).
    return (
        event.timestamp - timedelta(milliseconds=event.latency_ms) if isinstance(event, Decision) else event.timestamp
    )


def cost_table(report: CostReport) -> str:
    """The report as ``agentgraph report --prices`` prints it."""
    rows = [f"{'':<22}{'decisions':>10}{'by SLM':>8}{'LLM calls':>10}{'cost $':>12}{'all-LLM $':>12}"]
    for title, lines in (("node", report.by_node), ("route", report.by_route)):
        rows.append(f"by {title}")
        for name, line in sorted(lines.items()):
            rows.append(f"  {name:<20}{line.decisions:>10}{line.small_model_decisions:>8}{line.llm_calls:>10}"
                        f"{line.cost:>12.6f}{line.baseline_cost:>12.6f}")  # fmt: skip
    if set(report.by_tier) - {UNTIERED}:  # a store without tiered calls prints as it always did
        rows.append(f"by LLM tier{'LLM calls':>21}{'share':>8}{'cost $':>12}{'share':>8}")
        for name, tier in sorted(report.by_tier.items(), key=_tier_order):
            rows.append(f"  {name:<20}{tier.llm_calls:>10}{tier.call_share:>8.1%}{tier.llm_cost:>12.6f}"
                        f"{tier.cost_share:>8.1%}")  # fmt: skip
    cost = report.llm_cost + report.slm_cost
    share = f" ({report.saving / report.baseline_cost:.1%} of the baseline)" if report.baseline_cost else ""
    rows.append(f"total cost  ${cost:.6f} (LLM ${report.llm_cost:.6f}, SLM ${report.slm_cost:.6f}); "
                f"all-LLM ${report.baseline_cost:.6f}; saved ${report.saving:.6f}{share}")  # fmt: skip
    rows.append(f"SLM tokens  {report.slm_prompt_tokens:,} read, {report.slm_completion_tokens:,} written")
    if report.unpriced_steps:
        rows.append(f"unpriced    {json.dumps(report.unpriced_steps)}: no teacher call of these step types to price "
                    "them by (add step_tokens to the price table)")  # fmt: skip
    return "\n".join(rows)


def _tier_order(item: tuple[str, TierShare]) -> tuple[int, str]:
    # Cheapest first, as a cascade climbs; any other name (untiered, a tier of one's own) after them.
    return (TIER_ORDER.index(item[0]) if item[0] in TIER_ORDER else len(TIER_ORDER), item[0])
