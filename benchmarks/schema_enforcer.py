"""Benchmark the schema enforcer on the Bitext customer-support test split.

Runs :func:`agentgraph.nodes.schema_enforcer.create_schema_enforcer` with
:class:`agentgraph.graphs.customer_support.ticket.SupportTicket` over the test rows that carry
an ``order_id`` entity, plus a sample of rows without one, and prints:

- schema-valid %: outputs that re-validate against the schema with their input (target 100%);
- order_id exact match on rows that have one (leading zeros dropped on both
  sides, as the data does), and how many gold ids do not occur in their own text
  (label defects in the data);
- order ids invented for rows that have none;
- latency p50/p95 per extraction, and the slm / slm_repair / llm / handoff rates;
- mean SLM confidence of right and wrong order ids.

The LLM fallback is the one configured in the environment (``AGENTGRAPH_LLM_MODEL``, see
:mod:`agentgraph.llm`); without one, what the SLM cannot do ends in a handoff.

Usage:
    python benchmarks/schema_enforcer.py                  # every test row with an order_id, 100 without
    python benchmarks/schema_enforcer.py --limit 50 --others 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from agentgraph.graphs.customer_support import SupportTicket
from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.llm import default_llm
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.slm import VLLMSLM, TransformersSLM


def normalise_id(value: str | None) -> str | None:
    """The dataset's form of an id: leading zeros dropped."""
    return None if value is None else value.lstrip("0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows with an order_id")
    parser.add_argument("--others", type=int, default=100, help="rows without an order_id, sampled with a fixed seed")
    parser.add_argument("--slm-url", default=None, help="a vLLM server instead of the embedded SLM")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the embedded SLM")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures here")
    args = parser.parse_args()

    test = split_customer_support(load_customer_support())["test"]
    with_order = [r for r in test if r.entity_type == "order_id"][: args.limit]
    without_order = random.Random(0).sample([r for r in test if r.entity_type != "order_id"], args.others)
    slm = VLLMSLM(args.slm_url) if args.slm_url else TransformersSLM(num_threads=args.threads)
    enforcer = create_schema_enforcer(slm, SupportTicket, llm=default_llm(), output_key="ticket")

    latencies: list[float] = []
    strategies: Counter[str] = Counter()
    valid = produced = exact = defects = invented = 0
    confidence: dict[bool, list[float]] = {True: [], False: []}
    for row in [*with_order, *without_order]:
        started = time.perf_counter()
        update = enforcer({"text": row.text}, {})
        latencies.append((time.perf_counter() - started) * 1000)
        decision = update["decisions"][0]
        strategies[decision.strategy] += 1
        ticket = update["ticket"]
        if ticket is not None:
            produced += 1
            source = decision.input["text"]
            valid += SupportTicket.model_validate(ticket.model_dump(), context={"source_text": source}) == ticket
        predicted = normalise_id(ticket.order_id) if ticket is not None else None
        print(
            f"{decision.strategy:10} {predicted!s:16} {row.entity_value if row.entity_type == 'order_id' else '-'!s:16} "
            f"{latencies[-1]:8.0f} ms  {row.text[:60]!r}",
            file=sys.stderr,
        )
        if row.entity_type == "order_id":
            hit = predicted == row.entity_value
            exact += hit
            defects += not re.search(rf"(?<!\d)0*{re.escape(row.entity_value)}(?!\d)", row.text)
            if decision.confidence is not None:
                confidence[hit].append(decision.confidence)
        else:
            invented += predicted is not None

    rows = len(with_order) + len(without_order)
    figures = {
        "rows": rows,
        "rows_with_order_id": len(with_order),
        "schema_valid_pct": 100 * valid / produced if produced else None,
        "objects_produced_pct": 100 * produced / rows,
        "order_id_exact_match_pct": 100 * exact / len(with_order),
        "order_id_label_defects": defects,
        "order_id_invented_pct": 100 * invented / len(without_order) if without_order else None,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p95": float(np.percentile(latencies, 95)),
        "strategy_pct": {name: 100 * strategies[name] / rows for name in ("slm", "slm_repair", "llm", "handoff")},
        "mean_confidence_right": statistics.fmean(confidence[True]) if confidence[True] else None,
        "mean_confidence_wrong": statistics.fmean(confidence[False]) if confidence[False] else None,
        "slm": slm.model_name,
    }
    report = json.dumps(figures, indent=2)
    print(report)
    if args.json_path:
        Path(args.json_path).write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
