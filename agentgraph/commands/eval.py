"""``agentgraph eval``: score a saved component on labelled data.

``agentgraph eval router --data FILE [--router PATH] [--json]`` routes every
row of FILE (CSV or JSONL with a text and a label column; a label of
``__oos__`` means the request should not be answered as an intent) one at a
time through the example customer-support graph's router (its classifier, or
the saved classifier at PATH, with the example's act detector, write-safety
rule and clarifying questions), and prints accuracy, coverage at the gate,
selective accuracy, out-of-scope escalation rate, clarification rates, the most
frequent confusions and latency p50/p95. A clarifying question is not an
answer: it counts against coverage, and for an out-of-scope row as not
answered.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agentgraph.datasets import read_records
from agentgraph.errors import DatasetError

TEXT_COLUMNS = ("text", "instruction", "request")
LABEL_COLUMNS = ("label", "intent")


def register(groups: argparse._SubParsersAction) -> None:
    evaluate = groups.add_parser("eval", help="evaluate a saved component on labelled data")
    components = evaluate.add_subparsers(dest="eval_command", required=True, metavar="COMPONENT")
    router = components.add_parser("router", help="evaluate a saved router (default: the customer-support one)")
    router.add_argument("--data", type=Path, required=True, help="CSV or JSONL with a text and a label column")
    router.add_argument("--router", type=Path, help="a saved classifier folder (default: built on first use)")
    router.add_argument("--text-column", help=f"default: the first of {', '.join(TEXT_COLUMNS)}")
    router.add_argument("--label-column", help=f"default: the first of {', '.join(LABEL_COLUMNS)}")
    router.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    router.set_defaults(handler=_eval_router)


def read_labelled(
    path: Path, *, text_column: str | None = None, label_column: str | None = None
) -> list[tuple[str, str]]:
    """``(text, label)`` rows of a CSV or JSONL file (JSONL when the name ends in ``.jsonl``)."""
    records = read_records(path)
    if not records:
        raise DatasetError(f"{path} holds no rows")
    text_key = text_column or next((c for c in TEXT_COLUMNS if c in records[0]), None)
    label_key = label_column or next((c for c in LABEL_COLUMNS if c in records[0]), None)
    if text_key not in records[0] or label_key not in records[0]:
        raise DatasetError(
            f"{path} needs a text column ({text_column or ' or '.join(TEXT_COLUMNS)}) and a label column "
            f"({label_column or ' or '.join(LABEL_COLUMNS)}); it has {sorted(records[0])}"
        )
    return [(str(r[text_key]), str(r[label_key])) for r in records]


def _eval_router(args: argparse.Namespace) -> int:
    from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier
    from agentgraph.graphs.customer_support import support_router, support_router_path
    from agentgraph.routing import evaluate_router

    rows = read_labelled(args.data, text_column=args.text_column, label_column=args.label_column)
    classifier = IntentClassifier.load(args.router or support_router_path())
    unknown = sorted({label for _, label in rows} - set(classifier.labels) - {OUT_OF_SCOPE})
    if unknown:
        raise DatasetError(
            f"labels {unknown} are unknown to the router; use {OUT_OF_SCOPE} for requests that should escalate"
        )
    result = evaluate_router(support_router(classifier), rows)
    if args.json:
        print(result.model_dump_json())
        return 0

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    print(f"requests            {result.in_scope} in scope, {result.out_of_scope} out of scope")
    print(f"accuracy            {percent(result.accuracy)}")
    print(f"coverage at gate    {percent(result.coverage)}")
    print(f"selective accuracy  {percent(result.selective_accuracy)}")
    print(f"OOS escalation rate {percent(result.oos_escalation_rate)} (escalated or clarified)")
    print(
        f"clarified           {percent(result.clarification_rate)} in scope, {percent(result.oos_clarification_rate)} out of scope"
    )
    print(f"escalations         {', '.join(f'{k}: {v}' for k, v in sorted(result.escalations.items())) or 'none'}")
    print(f"questions asked     {', '.join(f'{k}: {v}' for k, v in sorted(result.clarifications.items())) or 'none'}")
    print(f"latency             p50 {result.latency_ms_p50:.2f} ms, p95 {result.latency_ms_p95:.2f} ms")
    print("confusions (expected -> routed: count)")
    for expected, routed, count in result.confusions:
        print(f"  {expected} -> {routed}: {count}")
    if not result.confusions:
        print("  none")
    return 0
