"""End-to-end benchmark of the example customer-support graph on the test split of the Bitext data.

Run: ``python benchmarks/customer_support.py [--per-intent 10] [--concurrency 1] [--slm-url URL] [--registry DIR] [--json]``

Each request runs as a new thread through the whole graph (router, the path's
nodes, output validator) with the embedded SLM, or a vLLM server with
``--slm-url``. A scripted stand-in for the frontier LLM answers escalations,
so LLM calls are counted as a configured deployment would make them (with no
LLM at all they would be handoffs instead). Approvals are not answered: a
refund or deletion counts as served once it waits for a person.

Reported: route accuracy (the route the request's intent belongs to; an
escalation of a routine request counts as wrong, as does routing a complaint
anywhere but escalation), intent accuracy, entity exact match on the lookup and
action paths (the ticket the ``extract`` node filled against the request's Bitext
entity, as :func:`~agentgraph.graphs.customer_support.distillation.ticket_target`
reads it), the share of requests that made
zero LLM calls, the share whose knowledge answer is the policy section written
for the intent, end-to-end latency p50/p95 per route and overall, and requests
per second. ``--concurrency N`` serves N customers at once (threads of one
process, the requests in a fixed shuffled order so every route is in flight
together); the embedded SLM batches their concurrent calls. ``--per-intent`` samples the test split
evenly (fixed seed); 0 runs all of it. ``--registry`` serves the models promoted
in a model registry (``agentgraph distill bootstrap customer-support`` writes the
example's own, ``cache_dir()/customer-support/models``); by default nothing is
promoted and ``extract`` runs the base SLM.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from langchain_core.language_models import FakeListChatModel

from agentgraph.distill.registry import ModelRegistry
from agentgraph.graphs.customer_support import (
    POLICY_SECTION_OF_INTENT,
    ROUTES,
    CustomerSupportParts,
    compose,
    load_policy_sections,
)
from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.graphs.customer_support.distillation import extraction_target, ticket_target
from agentgraph.running import run_turn
from agentgraph.slm import SLMSettings, load_slm


def sample(per_intent: int, seed: int = 7):
    test = split_customer_support(load_customer_support())["test"]
    if per_intent == 0:
        return test
    by_intent = defaultdict(list)
    for row in test:
        by_intent[row.intent].append(row)
    rng = random.Random(seed)
    return [
        row
        for intent in sorted(by_intent)
        for row in rng.sample(by_intent[intent], min(per_intent, len(by_intent[intent])))
    ]


def expected_ticket(row) -> dict | None:
    """The ticket fields the request names (None: its Bitext entity is not in the message, so it is not scored)."""
    target = ticket_target(row.text, extraction_target(row, where="the Bitext test split"))
    return None if target is None else {k: v for k, v in target.items() if k != "intent"}


def filled_ticket(turn) -> dict | None:
    """The fields the turn's schema enforcer filled (None: it handed off or did not run)."""
    extraction = next((d for d in turn.decisions if d.node == "schema_enforcer"), None)
    if extraction is None or extraction.outcome == "handoff":
        return None
    return {k: v for k, v in extraction.output.items() if v is not None}


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))} if values else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-intent", type=int, default=10, help="test requests per intent (0: the whole split)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests served at once (default 1)")
    parser.add_argument("--slm-url", help="a vLLM server instead of the embedded SLM")
    parser.add_argument("--registry", help="serve the models promoted in this model registry (default: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    section_text = {s.title: s.text for s in load_policy_sections()}
    started = time.perf_counter()
    slm = load_slm(SLMSettings.from_env(url=args.slm_url))
    llm = FakeListChatModel(responses=["I'm sorry to hear that. A colleague will look into it today."])
    data_dir = tempfile.mkdtemp(prefix="cs-bench-")
    registry = ModelRegistry(args.registry) if args.registry else None
    parts = CustomerSupportParts(data_dir=data_dir, slm=slm, llm=llm, registry=registry)
    graph = compose(parts)
    load_s = time.perf_counter() - started
    rows = sample(args.per_intent)
    random.Random(11).shuffle(rows)  # a mixed workload: concurrent requests are not all of one intent
    run_turn(graph, "track order 10001", thread_id="warm-up")  # first-call costs (tokenizer caches) are not per request

    latencies: dict[str, list[float]] = defaultdict(list)
    route_right = intent_right = zero_llm = 0
    knowledge_right = knowledge_total = 0
    entities_right = entities_total = 0
    taken = Counter()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        turns = list(pool.map(lambda numbered: run_turn(graph, numbered[1].text, thread_id=f"bench-{numbered[0]}"),
                              enumerate(rows)))  # fmt: skip
    elapsed = time.perf_counter() - started
    for row, turn in zip(rows, turns, strict=True):
        expected = ROUTES[row.intent]
        route_right += turn.route == expected
        intent_right += turn.intent == row.intent
        zero_llm += turn.llm_calls == 0
        taken[(expected, turn.route)] += 1
        latencies[turn.route].append(turn.latency_ms)
        ticket = expected_ticket(row)
        if expected in ("lookup", "action") and turn.route == expected and ticket is not None:
            entities_total += 1
            entities_right += filled_ticket(turn) == ticket
        if expected == "knowledge":
            knowledge_total += 1
            knowledge_right += turn.response == section_text[POLICY_SECTION_OF_INTENT[row.intent]]

    every = [ms for values in latencies.values() for ms in values]
    report = {
        "backend": "vllm" if args.slm_url else "embedded",
        "requests": len(rows),
        "concurrency": args.concurrency,
        "route_accuracy": route_right / len(rows),
        "intent_accuracy": intent_right / len(rows),
        "extractor": parts.extraction_artifact["slm"].model_name if parts.extraction_artifact else slm.model_name,
        "entity_exact_match": entities_right / entities_total if entities_total else None,
        "entity_rows": entities_total,
        "zero_llm_share": zero_llm / len(rows),
        "knowledge_section_accuracy": knowledge_right / knowledge_total if knowledge_total else None,
        "latency_ms": percentiles(every),
        "latency_ms_by_route": {
            route: percentiles(values) | {"n": len(values)} for route, values in sorted(latencies.items())
        },
        "requests_per_second": len(rows) / elapsed,
        "load_s": load_s,
        "routes_taken": {f"{expected}->{route}": n for (expected, route), n in sorted(taken.items())},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"backend {report['backend']}, {len(rows)} test requests, {args.concurrency} at once, graph loaded in {load_s:.1f} s"
    )
    print(
        f"route accuracy      {100 * report['route_accuracy']:.2f}%   intent accuracy {100 * report['intent_accuracy']:.2f}%"
    )
    if entities_total:
        print(f"entity exact match  {100 * report['entity_exact_match']:.2f}% of {entities_total} lookup and action "
              f"requests routed right (extract: {report['extractor']})")  # fmt: skip
    print(f"zero LLM calls      {100 * report['zero_llm_share']:.2f}% of requests")
    if knowledge_total:
        print(f"knowledge answers   {100 * report['knowledge_section_accuracy']:.2f}% the intent's own policy section")
    print(f"latency             p50 {report['latency_ms']['p50']:.0f} ms, p95 {report['latency_ms']['p95']:.0f} ms; "
          f"{report['requests_per_second']:.2f} requests/s")  # fmt: skip
    for route, figures in report["latency_ms_by_route"].items():
        print(f"  {route:<10} n={figures['n']:<4} p50 {figures['p50']:.0f} ms, p95 {figures['p95']:.0f} ms")
    print("expected -> taken: " + ", ".join(f"{k} {v}" for k, v in report["routes_taken"].items()))


if __name__ == "__main__":
    main()
