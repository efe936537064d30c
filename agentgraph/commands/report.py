"""``agentgraph report``: what the control layer did over time, as a table and a plot.

``agentgraph report --traces STORE --out report.png [--bucket hour|day|week] [--json]``
reads a trace store (the SQLite file a graph writes its decisions and LLM calls
to, ``decisions.db`` for ``agentgraph run``, or its ``postgresql://`` database) and prints, per hour, day or week (UTC),
route volumes, LLM calls, the share of requests that used the LLM, shadow
agreement and the latest drift check (:mod:`agentgraph.distill.report` defines
each), then writes the same series as a PNG to ``--out``. ``--json`` prints the
report as JSON instead of the table. With a price table (``--prices FILE`` or
``AGENTGRAPH_PRICES``; :class:`agentgraph.records.costs.PriceTable`) it adds what
the LLM and the SLM cost, per node and per route, and the saving against an
all-LLM baseline (:mod:`agentgraph.records.costs`), as a table and a second PNG (``--cost-out``, default
``REPORT-cost.png`` beside ``--out``). A store with nothing to report is an error
(exit status 2) and writes no PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agentgraph.commands import open_traces

BUCKETS = ("hour", "day", "week")
"""As :data:`agentgraph.shadow.Bucket`, named here so that building the parser imports nothing heavy."""


def register(groups: argparse._SubParsersAction) -> None:
    report = groups.add_parser(
        "report", help="route volumes, LLM share, shadow agreement and drift over time: table and PNG"
    )
    report.add_argument("--traces", required=True,
                        help="a trace store: a SQLite file (the graph's decisions.db) or a postgresql:// URL")  # fmt: skip
    report.add_argument("--out", type=Path, required=True, help="the PNG to write")
    report.add_argument("--bucket", choices=BUCKETS, default="day", help="time bucket (UTC; default day)")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    report.add_argument("--prices", type=Path,
                        help="a price table (JSON; env AGENTGRAPH_PRICES): adds cost per node and per route and the "
                        "saving against sending every step to the LLM")  # fmt: skip
    report.add_argument("--cost-out", type=Path,
                        help="the cost PNG, with --prices (default: beside --out, its name ending in -cost.png)")  # fmt: skip
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    import os

    from agentgraph.distill.report import build_report, plot_costs, plot_report, report_table
    from agentgraph.records.costs import PRICES_ENV, PriceTable, cost_report, cost_table

    prices = PriceTable.load(args.prices) if args.prices or os.environ.get(PRICES_ENV) else None
    store = open_traces(args.traces, "give the graph's decisions.db (agentgraph run writes one) or its database URL")
    try:
        report = build_report(store, bucket=args.bucket)
        cost = cost_report(store, prices) if prices is not None else None
    finally:
        store.close()
    if args.json:
        figures = report.model_dump(mode="json") | ({"cost": cost.model_dump(mode="json")} if cost else {})
        print(json.dumps(figures, indent=2))
    else:
        print(report_table(report) + (f"\n\n{cost_table(cost)}" if cost else ""))
    written = [plot_report(report, args.out)]
    if cost is not None:
        written.append(plot_costs(cost, args.cost_out or args.out.with_name(f"{args.out.stem}-cost.png")))
    for path in written:
        print(f"wrote       {path}", file=sys.stderr if args.json else sys.stdout)  # stdout stays pure JSON with --json
    return 0
