"""``agentgraph report``: what the control layer did over time, as a table and a plot.

``agentgraph report --traces STORE --out report.png [--bucket hour|day|week] [--json]``
reads a trace store (the SQLite file a graph writes its decisions and LLM calls
to, ``decisions.db`` for ``agentgraph run``, or its ``postgresql://`` database) and prints, per hour, day or week (UTC),
route volumes, LLM calls, the share of requests that used the LLM, shadow
agreement and the latest drift check (:mod:`agentgraph.distill.report` defines
each), then writes the same series as a PNG to ``--out``. ``--json`` prints the
report as JSON instead of the table. A store with nothing to report is an error
(exit status 2) and writes no PNG.
"""

from __future__ import annotations

import argparse
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
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from agentgraph.distill.report import build_report, plot_report, report_table

    store = open_traces(args.traces, "give the graph's decisions.db (agentgraph run writes one) or its database URL")
    try:
        report = build_report(store, bucket=args.bucket)
    finally:
        store.close()
    print(report.model_dump_json(indent=2) if args.json else report_table(report))
    path = plot_report(report, args.out)
    print(f"wrote       {path}", file=sys.stderr if args.json else sys.stdout)  # stdout stays pure JSON with --json
    return 0
