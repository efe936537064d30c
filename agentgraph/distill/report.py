"""What the control layer did over time, from one trace store: route volumes, LLM share, shadow agreement, drift.

:func:`build_report` reads a :class:`~agentgraph.records.traces.SQLiteTraceStore`
(its LLM calls and decisions) and counts, per hour, day or week (UTC, by each record's
timestamp):

- **requests**: route decisions (kind ``route``, any router node; empty-input
  rejections left out), and per route how many went there (``output["route"]``;
  escalations under the escalation route).
- **LLM calls**: the frontier-LLM calls recorded in the bucket.
- **LLM share**: the share of requests whose answer involved the LLM. A
  request's did when the LLM routed it (strategy ``llm``) or when at least one
  LLM call other than a shadow one (:data:`~agentgraph.shadow.SHADOW_KEY`: the
  teacher asked beside a student that answered) is attributed to it. A call is
  attributed through its thread: a call by the routing node itself (the LLM
  routing) starts before that node records its decision, so it belongs to the
  thread's first route decision at or after it; any other call (escalation,
  extraction, an answer) belongs to the thread's last route decision at or
  before it. Calls without a thread, or before a thread's first request, count
  as calls but involve no request.
- **agreement**: ``agree / (agree + disagree)`` over the shadow comparisons
  (kind ``shadow``; one whose teacher failed is left out), with their count
  (:func:`~agentgraph.shadow.shadow_agreement`).
- **drift**: the metrics of the bucket's latest drift check (kind ``drift``,
  :mod:`agentgraph.distill.drift`), and whether any check in the bucket
  signalled a retrain; empty when there was none.

:func:`report_table` prints it as plain text and :func:`plot_report` draws the
same series as a PNG of four panels sharing the time axis.

Example:
    >>> from datetime import UTC, datetime
    >>> from agentgraph.records.decisions import Decision
    >>> from agentgraph.distill.report import build_report, report_table
    >>> from agentgraph.records.traces import SQLiteTraceStore
    >>> store = SQLiteTraceStore(":memory:")
    >>> for day, route, strategy in [(1, "lookup", "llm"), (1, "action", "classifier"), (2, "lookup", "classifier")]:
    ...     store.record(Decision(node="router", kind="route", input="where is my order?", output={"route": route},
    ...                           strategy=strategy, timestamp=datetime(2025, 3, day, 9, tzinfo=UTC)))
    >>> print(report_table(build_report(store, bucket="day")))
    bucket      requests  action  lookup  LLM calls  LLM share  agreement  out of scope  PSI  distance  novel  drift
    2025-03-01         2       1       1          0      50.0%          -             -    -         -      -      -
    2025-03-02         1       0       1          0       0.0%          -             -    -         -      -      -
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from agentgraph.distill.drift import RETRAIN, DriftReport
from agentgraph.errors import AgentGraphError
from agentgraph.records.costs import CostLine, CostReport
from agentgraph.records.decisions import Decision
from agentgraph.records.traces import LLMCall, SQLiteTraceStore
from agentgraph.shadow import SHADOW_KEY, Bucket, bucket_start, shadow_agreement

BUCKET_LENGTHS: dict[str, timedelta] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


class ReportError(AgentGraphError):
    """There is nothing to report, or the report cannot be written."""


class DriftPoint(BaseModel):
    """A bucket's drift: the latest check's metrics, and whether any check in the bucket signalled a retrain."""

    out_of_scope_rate: float
    confidence_psi: float | None
    embedding_distance_ratio: float
    novel_input_share: float
    retrain: bool


class ReportBucket(BaseModel):
    """One hour, day or week of a store."""

    start: datetime
    requests: int = 0
    routes: dict[str, int] = Field(default_factory=dict)
    llm_calls: int = 0
    llm_requests: int = Field(default=0, description="requests that used the LLM")
    shadow_comparisons: int = Field(default=0, description="shadow comparisons the teacher answered")
    agreement: float | None = Field(default=None, description="the share of them where teacher and student agreed")
    drift: DriftPoint | None = None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented workaround for python/mypy#1362
    @property
    def llm_share(self) -> float | None:
        return self.llm_requests / self.requests if self.requests else None


class TraceReport(BaseModel):
    store: str
    bucket: Bucket
    routes: list[str] = Field(description="every route seen, sorted")
    buckets: list[ReportBucket] = Field(description="the buckets with any record, oldest first")


def requests_using_llm(requests: Sequence[Decision], calls: Iterable[LLMCall]) -> set[str]:
    """The ids of the ``requests`` (route decisions, oldest first) that used the LLM (see the module docstring)."""
    used = {request.id for request in requests if request.strategy == "llm"}
    calls = [call for call in calls if not call.metadata.get(SHADOW_KEY)]
    threads: dict[str, list[Decision]] = defaultdict(list)
    for request in requests:
        if request.thread_id is not None:
            threads[request.thread_id].append(request)
    times = {thread: [request.timestamp for request in turns] for thread, turns in threads.items()}
    for call in calls:
        thread = call.thread_id
        if thread is None or not (turns := threads.get(thread)):
            continue
        following = bisect.bisect_left(times[thread], call.timestamp)
        if following < len(turns) and turns[following].node == call.node:
            used.add(turns[following].id)
            continue
        preceding = bisect.bisect_right(times[thread], call.timestamp) - 1
        if preceding >= 0:
            used.add(turns[preceding].id)
    return used


def build_report(store: SQLiteTraceStore, *, bucket: Bucket = "day") -> TraceReport:
    """Count a store's route decisions, LLM calls, shadow comparisons and drift checks per ``bucket``."""
    requests = [d for d in store.decisions(kind="route") if d.outcome != "rejected"]
    calls = list(store.calls())
    shadows = list(store.decisions(kind="shadow"))
    drifts = list(store.decisions(kind="drift"))
    if not (requests or calls or shadows or drifts):
        raise ReportError(
            f"nothing to report: {store.path} holds no route decisions, LLM calls, shadow comparisons or drift checks; "
            "give the graph this store as its decision log (agentgraph run does) and route some requests first"
        )
    buckets: dict[datetime, ReportBucket] = {}

    def at(timestamp: datetime) -> ReportBucket:
        start = bucket_start(timestamp.astimezone(UTC), bucket)
        return buckets.setdefault(start, ReportBucket(start=start))

    used = requests_using_llm(requests, calls)
    for request in requests:
        row = at(request.timestamp)
        route = (request.output or {}).get("route") if isinstance(request.output, dict) else None
        row.requests += 1
        row.routes[str(route)] = row.routes.get(str(route), 0) + 1
        row.llm_requests += request.id in used
    for call in calls:
        at(call.timestamp).llm_calls += 1
    for start, compared, agreement in shadow_agreement(shadows, bucket=bucket):
        row = at(start)
        row.shadow_comparisons, row.agreement = compared, agreement
    for check in drifts:  # oldest first: the latest check of a bucket is the one kept
        row, metrics = at(check.timestamp), DriftReport.model_validate(check.output).metrics
        retrain = check.outcome == RETRAIN or (row.drift is not None and row.drift.retrain)
        row.drift = DriftPoint(**metrics.model_dump(include=set(DriftPoint.model_fields)), retrain=retrain)
    routes = sorted({route for row in buckets.values() for route in row.routes})
    return TraceReport(
        store=store.path, bucket=bucket, routes=routes, buckets=[buckets[start] for start in sorted(buckets)]
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _figure(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def report_table(report: TraceReport) -> str:
    """The report as a plain-text table: one row per bucket, one column per route."""
    header = ["bucket", "requests", *report.routes, "LLM calls", "LLM share", "agreement", "out of scope", "PSI",
              "distance", "novel", "drift"]  # fmt: skip
    rows = [header]
    for row in report.buckets:
        drift = row.drift
        rows.append([
            row.start.strftime("%Y-%m-%d %H:00" if report.bucket == "hour" else "%Y-%m-%d"),
            str(row.requests), *(str(row.routes.get(route, 0)) for route in report.routes), str(row.llm_calls),
            _percent(row.llm_share), f"{_percent(row.agreement)} ({row.shadow_comparisons})" if row.shadow_comparisons else "-",
            _percent(drift.out_of_scope_rate) if drift else "-",
            _figure(None if drift is None else drift.confidence_psi),
            _figure(None if drift is None else drift.embedding_distance_ratio, ".2f"),
            _percent(drift.novel_input_share) if drift else "-",
            ("RETRAIN" if drift.retrain else "ok") if drift else "-",
        ])  # fmt: skip
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(header))]
    # The bucket column reads left to right; the figures line up on their last digit.
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=False)))
             for cells in rows]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def plot_report(report: TraceReport, path: str | Path) -> Path:
    """Draw the report as a PNG: route volumes, LLM share, shadow agreement and drift over time."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever backend the environment asks for
    import matplotlib.pyplot as plt

    if not report.buckets:
        raise ReportError("the report has no buckets to plot")
    length = BUCKET_LENGTHS[report.bucket]
    # Every bucket from the first to the last, the empty ones too, so that lines break where nothing was recorded.
    first, last = report.buckets[0].start, report.buckets[-1].start
    recorded = {row.start: row for row in report.buckets}
    timeline = [first + k * length for k in range((last - first) // length + 1)]
    rows = [recorded.get(start) or ReportBucket(start=start) for start in timeline]
    starts = [row.start for row in rows]
    middles = [start + length / 2 for start in starts]
    drifts = [row.drift for row in rows]

    def series(values: Iterable[float | None], scale: float = 1.0) -> list[float]:
        return [float("nan") if value is None else scale * value for value in values]

    def drift_series(value: Callable[[DriftPoint], float | None]) -> list[float]:
        return series(None if point is None else value(point) for point in drifts)

    figure, (volumes, share, agreement, drift) = plt.subplots(
        4, 1, sharex=True, figsize=(10, 11), constrained_layout=True
    )
    bottom = [0] * len(rows)
    for route in report.routes:
        counts = [row.routes.get(route, 0) for row in rows]
        # matplotlib's date unit is the day
        volumes.bar(starts, counts, width=0.8 * length / timedelta(days=1), bottom=bottom, align="edge", label=route)
        bottom = [b + c for b, c in zip(bottom, counts, strict=False)]
    volumes.set(ylabel="requests", title=f"route volumes per {report.bucket}")
    if report.routes:
        volumes.legend(loc="upper left", fontsize="small", ncols=min(4, len(report.routes)))

    share.plot(middles, series((row.llm_share for row in rows), 100), marker="o")
    share.set(ylabel="% of requests", title="LLM share: requests whose answer involved the LLM", ylim=(-2, 102))
    agreement.plot(middles, series((row.agreement for row in rows), 100), marker="o", color="tab:green")
    agreement.set(ylabel="% agree", title="shadow agreement: student and teacher chose the same", ylim=(-2, 102))

    drift.plot(middles, drift_series(lambda d: d.out_of_scope_rate), marker="o", label="out-of-scope rate")
    drift.plot(middles, drift_series(lambda d: d.novel_input_share), marker="s", label="novel-input share")
    drift.set(
        ylabel="share of the window",
        ylim=(-0.02, 1.02),
        title="drift: latest check per bucket (red: retrain signalled)",
    )
    psi = drift.twinx()
    psi.plot(middles, drift_series(lambda d: d.confidence_psi), marker="^", color="tab:purple", label="confidence PSI")
    psi.set(ylabel="confidence PSI", ylim=(0, None))
    for start, point in zip(starts, drifts, strict=False):
        if point is not None and point.retrain:
            drift.axvspan(start, start + length, color="tab:red", alpha=0.15, lw=0)
    drift.legend(handles=drift.get_lines() + psi.get_lines(), loc="upper left", fontsize="small")
    figure.autofmt_xdate()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_costs(cost: CostReport, path: str | Path) -> Path:
    """Draw the cost report as a PNG: per route and per node, what the run cost (the LLM's part and the SLM's)
    beside what sending every step to the LLM would have cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    for panel, (title, lines) in zip(panels, (("route", cost.by_route), ("node", cost.by_node)), strict=True):
        names = sorted(lines)
        shown: list[CostLine] = [lines[name] for name in names]
        places = range(len(names))
        panel.bar([x - 0.2 for x in places], [line.llm_cost for line in shown], width=0.4, label="LLM")
        panel.bar([x - 0.2 for x in places], [line.slm_cost for line in shown], width=0.4,
                  bottom=[line.llm_cost for line in shown], label="SLM")  # fmt: skip
        panel.bar([x + 0.2 for x in places], [line.baseline_cost for line in shown], width=0.4, label="all-LLM",
                  color="tab:gray")  # fmt: skip
        panel.set_xticks(list(places), names, rotation=30, ha="right")
        panel.set(ylabel="$", title=f"cost per {title}: this run against every step sent to the LLM")
        panel.legend(loc="upper right", fontsize="small")
    share = f" ({cost.saving / cost.baseline_cost:.0%} of all-LLM)" if cost.baseline_cost else ""
    figure.suptitle(f"cost ${cost.llm_cost + cost.slm_cost:.4f}, all-LLM ${cost.baseline_cost:.4f}: "
                    f"saved ${cost.saving:.4f}{share}")  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
