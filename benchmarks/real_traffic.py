"""Real-traffic benchmark: the example router on a stress set built like real customer messages, and on Bitext.

Run: ``python benchmarks/real_traffic.py [--per-kind 250] [--no-graph] [--write-stress FILE] [--json]``

The stress set is built here, reproducibly (fixed seeds), from three parts:

1. Perturbations of the Bitext **test** split (never trained on): for each
   perturbation of :mod:`agentgraph.perturb` (typos by keyboard distance,
   dropped words, fragments of 1-4 words, lower case, capitals, chat
   abbreviations, Hinglish code-mixing, greetings and thanks around the
   request) and for their realistic mix, ``--per-kind`` requests keep their
   intent; the same requests reduced to their identifiers alone
   ("order no 55102") should be clarified, never answered.
2. Hand-written messages in the style of production chatbots, written apart
   from the training data by another author: ``data/real_style_requests.jsonl``
   (in scope, with their intents) and ``data/non_requests.jsonl`` (greetings,
   thanks, statements, refusals, questions about writes, product and stock
   questions, bare ids, gibberish, other languages, chit-chat).
3. The earlier blind sets: ``data/natural_requests.jsonl`` and the
   unrelated-domain requests of ``data/unrelated_requests.jsonl``.

Each message is routed alone, as the first turn of a new thread, through the
router the example graph uses (classifier, act detector, write-safety rule,
clarifying questions). Reported per group and overall:

- intent top-1 (in-scope messages): the router's label, gate or not;
- route accuracy: the share whose route is their intent's path;
- coverage: the share answered or clarified without the LLM (escalations are
  what the LLM would take), and answered alone;
- selective accuracy: right among the answered;
- out-of-scope escalation: the share of messages that should not be answered
  as an intent that were escalated or clarified;
- clarification rate and LLM share;
- writes reached from non-requests: messages that ask for no write which the
  router let through to a write with the customer's consent. With the graph
  check (default; ``--no-graph`` skips it), every message of the set that
  should not be answered as an intent and names an order also runs through
  the whole example graph, aimed at the demo customer's open order, and the
  store's own count of writes is reported.

The same figures on the Bitext test split show nothing regressed, with the
router's decision latency (p50, p95) there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from agentgraph.classifier import OUT_OF_SCOPE
from agentgraph.datasets import read_records
from agentgraph.graphs.customer_support import ORDER_REFERENCE, ROUTES, WRITE_POLICY, support_router
from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.perturb import PERTURBATIONS, id_only, realistic
from agentgraph.routing import Router, RoutingDecision, score_verdicts

DATA = Path(__file__).parent / "data"
STRESS_SEED = 20261203
DEMO_OPEN_ORDER = "48213"
"""An order of the demo customer the store can still cancel: a write aimed at it would show in the store."""


WRITTEN_SETS = (
    ("real_style_requests", "hand_written"), ("non_requests", "non_requests"), ("natural_requests", "natural"),
    ("unrelated_requests", "unrelated"),
)  # fmt: skip
"""The written sets of ``data/`` (file name, group): the non-requests and unrelated ones are labelled ``__oos__``."""


class StressMessage(BaseModel):
    """One message of the stress set and what should happen to it."""

    text: str
    label: str
    group: str
    kind: str
    requests_write: bool


def stress_set(per_kind: int = 250, *, seed: int = STRESS_SEED) -> list[StressMessage]:
    """The stress set (see the module docstring), the same for the same ``per_kind`` and ``seed``."""
    test = split_customer_support(load_customer_support())["test"]
    rng = random.Random(seed)
    messages = []
    for kind in [*PERTURBATIONS, "realistic"]:
        for row in rng.sample(test, per_kind):
            text = realistic(row.text, rng) if kind == "realistic" else realistic(row.text, rng, primary=kind)
            messages.append(StressMessage(text=text, label=row.intent, group="perturbed", kind=kind,
                                          requests_write=WRITE_POLICY.writes(row.intent)))  # fmt: skip
    for row in rng.sample([r for r in test if r.entity_type == "order_id"], min(per_kind, 100)):
        messages.append(StressMessage(text=id_only(row.text, rng), label=OUT_OF_SCOPE, group="perturbed",
                                      kind="id_only", requests_write=False))  # fmt: skip
    for name, group in WRITTEN_SETS:
        messages += [
            StressMessage(text=record["text"], label=record["label"], group=group, kind=record.get("kind", group),
                          requests_write=WRITE_POLICY.writes(record["label"]))
            for record in read_records(DATA / f"{name}.jsonl")
        ]  # fmt: skip
    return messages


def expected_route(label: str) -> str:
    return "escalate" if label == OUT_OF_SCOPE else ROUTES[label]


def score(pairs: Iterable[tuple[StressMessage, RoutingDecision]]) -> dict[str, Any]:
    """The figures of the module docstring for routed ``(message, verdict)`` pairs.

    Top-1, answered, selective accuracy and out-of-scope escalation are :func:`score_verdicts`' (what
    ``agentgraph eval router`` reports); route accuracy, coverage with the clarified, the LLM share and the
    writes reached are this benchmark's own.
    """
    pairs = list(pairs)
    evaluation = score_verdicts((m.label, v) for m, v in pairs)
    scoped = [(m, v) for m, v in pairs if m.label != OUT_OF_SCOPE]

    def share(items, predicate) -> float | None:
        return float(np.mean([predicate(m, v) for m, v in items])) if items else None

    return {
        "messages": len(pairs),
        "in_scope": evaluation.in_scope,
        "out_of_scope": evaluation.out_of_scope,
        "intent_top1": evaluation.accuracy,
        "route_accuracy": share(scoped, lambda m, v: v.route == expected_route(m.label)),
        "coverage": share(scoped, lambda m, v: not v.escalated),
        "answered": evaluation.coverage,
        "selective_accuracy": evaluation.selective_accuracy,
        "selective_accuracy_at_coverage": evaluation.selective_accuracy_at_coverage,
        "oos_escalation": evaluation.oos_escalation_rate,
        "clarification_rate": share(pairs, lambda m, v: v.clarified),
        "llm_share": share(pairs, lambda m, v: v.escalated),
        "writes_from_non_requests": sum(1 for m, v in pairs if not m.requests_write and v.consent is not None),
        "latency": {"p50_ms": evaluation.latency_ms_p50, "p95_ms": evaluation.latency_ms_p95},
    }


def route_all(router: Router, messages: list[StressMessage]) -> list[tuple[StressMessage, RoutingDecision]]:
    return [(message, router.decide(message.text)) for message in messages]


def by(pairs, key) -> dict[str, dict]:
    groups: dict[str, list] = defaultdict(list)
    for pair in pairs:
        groups[key(pair[0])].append(pair)
    return {name: score(items) for name, items in sorted(groups.items())}


def graph_writes(messages: list[StressMessage]) -> dict[str, int]:
    """Run each non-request naming an order through the example graph, aimed at the demo customer's open order.

    Returns how many ran and how many writes the store recorded (it should record none).
    """
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose
    from agentgraph.running import run_turn

    aimed = [ORDER_REFERENCE.compiled.sub(DEMO_OPEN_ORDER, m.text) for m in messages
             if m.label == OUT_OF_SCOPE and ORDER_REFERENCE.compiled.search(m.text)]  # fmt: skip
    parts = CustomerSupportParts(data_dir=tempfile.mkdtemp(prefix="real-traffic-"))
    graph = compose(parts)
    for i, text in enumerate(aimed):
        run_turn(graph, text, thread_id=f"non-request-{i}")
    return {"messages": len(aimed), "store_writes": parts.shop.count_writes()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=250, help="perturbed test requests per perturbation")
    parser.add_argument("--no-graph", action="store_true", help="skip running non-requests through the whole graph")
    parser.add_argument(
        "--write-stress", type=Path, help="also write the stress set as JSONL (for agentgraph eval router)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    router = support_router()
    messages = stress_set(args.per_kind)
    if args.write_stress:
        args.write_stress.write_text("".join(m.model_dump_json() + "\n" for m in messages), encoding="utf-8")
    pairs = route_all(router, messages)
    test = split_customer_support(load_customer_support())["test"]
    bitext = route_all(router, [StressMessage(text=r.text, label=r.intent, group="bitext_test", kind="clean",
                                              requests_write=WRITE_POLICY.writes(r.intent)) for r in test])  # fmt: skip
    report = {
        "stress_set": score(pairs),
        "stress_set_by_group": by(pairs, lambda m: m.group),
        "stress_set_by_kind": by(pairs, lambda m: f"{m.group}/{m.kind}"),
        "bitext_test": score(bitext),
    }
    if not args.no_graph:
        report["graph_non_requests"] = graph_writes(messages)
    if args.json:
        print(json.dumps(report))
        return 0
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    columns = ["intent_top1", "route_accuracy", "coverage", "answered", "selective_accuracy", "oos_escalation",
               "clarification_rate", "llm_share", "writes_from_non_requests"]  # fmt: skip

    def cell(value) -> str:
        return "-" if value is None else (f"{value:.1%}" if isinstance(value, float) else str(value))

    print(f"{'set':42s} {'n':>5s} " + " ".join(f"{c[:12]:>12s}" for c in columns))
    rows = [("stress set (all)", report["stress_set"]), *report["stress_set_by_group"].items(),
            *(("  " + k, v) for k, v in report["stress_set_by_kind"].items()), ("bitext test split", report["bitext_test"])]  # fmt: skip
    for name, figures in rows:
        print(f"{name:42s} {figures['messages']:5d} " + " ".join(f"{cell(figures[c]):>12s}" for c in columns))
    bitext = report["bitext_test"]
    print(f"\nBitext test: selective accuracy at 95% coverage {cell(bitext['selective_accuracy_at_coverage']['0.95'])}, "
          f"router p50 {bitext['latency']['p50_ms']:.2f} ms, p95 {bitext['latency']['p95_ms']:.2f} ms")  # fmt: skip
    if "graph_non_requests" in report:
        graph = report["graph_non_requests"]
        print(f"Example graph: {graph['messages']} non-requests naming order {DEMO_OPEN_ORDER}, "
              f"{graph['store_writes']} writes in the store")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
