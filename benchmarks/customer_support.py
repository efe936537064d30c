"""End-to-end benchmark of the example customer-support graph on the test split of the Bitext data, beside
the same requests in teacher mode.

Run: ``python benchmarks/customer_support.py [--per-intent 10] [--concurrency 1] [--slm-url URL] [--registry DIR]
[--prices JSON] [--json]``

Each request runs as a new thread through the whole graph (router, the path's
nodes, output validator) with the embedded SLM, or a vLLM server with
``--slm-url``. The frontier LLM is a scripted stand-in that knows each
request's right answer (:class:`scripted_teacher.KnowingTeacher`: the intent,
and the ticket its Bitext entity makes) and reports the tokens a provider would
count for the prompt it is sent and the answer it gives. Approvals are not
answered: a refund or deletion counts as served once it waits for a person.

Two runs over the same requests, in the same process:

- ``small_models``: the graph as configured (the router's classifier, the SLM's
  extraction, the reranker), the LLM answering escalations and the extractions
  the SLM and its repair fail, as a deployment with an LLM would;
- ``teacher_mode``: every node with a mode (``router``, ``extract``) in
  ``teacher`` mode, so the LLM routes every request and fills every ticket: the
  all-LLM agent the small models replace. The retrieval and pruning, the tools
  and the validator have no LLM step in this graph and run in both.

Reported per run: route accuracy (the route the request's intent belongs to; an
escalation of a routine request counts as wrong, as does routing a complaint
anywhere but escalation), intent accuracy, entity exact match on the lookup and
action paths (the ticket the ``extract`` node filled against the request's Bitext
entity, as :func:`~agentgraph.graphs.customer_support.distillation.ticket_target`
reads it), the share whose knowledge answer is the policy section written for the
intent, LLM calls, LLM tokens and cost per request (``--prices``, default
:data:`scripted_teacher.TEACHER_PRICES`; the SLM priced by its machine's time),
the share of requests with no LLM call, latency p50/p95 per route and overall
without the LLM's own time (``TurnResult.llm_ms``), the router node's own p50/p95
(its logged decisions), and requests per second;
then the ratios of teacher mode to the small models. ``--concurrency N`` serves N
customers at once (threads of one process, the requests in a fixed shuffled
order so every route is in flight together); the embedded SLM batches their
concurrent calls. ``--per-intent`` samples the test split evenly (fixed seed); 0
runs all of it. ``--registry`` serves the models promoted in a model registry
(``agentgraph distill bootstrap customer-support`` writes the example's own,
``cache_dir()/customer-support/models``); by default nothing is promoted and
``extract`` runs the base SLM.
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
from scripted_teacher import TEACHER_PRICES, KnowingTeacher

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
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.modes import NodeModes
from agentgraph.records.costs import PriceTable, cost_report
from agentgraph.routing.strategies import ROUTE_CHOICE
from agentgraph.running import run_turn
from agentgraph.slm import SLMSettings, load_slm
from agentgraph.text import clean_text


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


def serve(graph, parts: CustomerSupportParts, rows, concurrency: int) -> tuple[list, float]:
    """Every row through ``graph``, ``concurrency`` at once, each on a new thread; the turns and the seconds it took.

    The shadow checks under way are finished, so the trace store holds every call the run made.
    """
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        turns = list(pool.map(lambda numbered: run_turn(graph, numbered[1].text, thread_id=f"bench-{numbered[0]}",
                                                        callbacks=[parts.llm_call_recorder]),
                              enumerate(rows)))  # fmt: skip
    elapsed = time.perf_counter() - started
    parts.close()
    return turns, elapsed


def figures(rows, turns, elapsed: float, parts: CustomerSupportParts, prices: PriceTable) -> dict:
    """What one run did: accuracy, LLM calls, tokens and cost per request, latency per route (the LLM's time out)."""
    section_text = {s.title: s.text for s in load_policy_sections()}
    latencies: dict[str, list[float]] = defaultdict(list)
    route_right = intent_right = zero_llm = 0
    knowledge_right = knowledge_total = 0
    entities_right = entities_total = 0
    taken = Counter()
    for row, turn in zip(rows, turns, strict=True):
        expected = ROUTES[row.intent]
        route_right += turn.route == expected
        intent_right += turn.intent == row.intent
        zero_llm += turn.llm_calls == 0
        taken[(expected, turn.route)] += 1
        latencies[turn.route].append(turn.latency_ms - turn.llm_ms)
        ticket = expected_ticket(row)
        if expected in ("lookup", "action") and turn.route == expected and ticket is not None:
            entities_total += 1
            entities_right += filled_ticket(turn) == ticket
        if expected == "knowledge":
            knowledge_total += 1
            knowledge_right += turn.response == section_text[POLICY_SECTION_OF_INTENT[row.intent]]
    cost = cost_report(parts.trace_store, prices)
    every = [ms for values in latencies.values() for ms in values]
    n = len(rows)
    return {
        "route_accuracy": route_right / n,
        "intent_accuracy": intent_right / n,
        "entity_exact_match": entities_right / entities_total if entities_total else None,
        "entity_rows": entities_total,
        "zero_llm_share": zero_llm / n,
        "knowledge_section_accuracy": knowledge_right / knowledge_total if knowledge_total else None,
        "llm_calls_per_request": sum(turn.llm_calls for turn in turns) / n,
        "llm_tokens_per_request": {
            "prompt": sum(t.prompt for turn in turns for t in turn.llm_tokens.values()) / n,
            "completion": sum(t.completion for turn in turns for t in turn.llm_tokens.values()) / n,
        },
        "cost_per_request_usd": {"llm": cost.llm_cost / n, "slm": cost.slm_cost / n},
        "llm_ms_per_request": sum(turn.llm_ms for turn in turns) / n,
        "latency_ms": percentiles(every),
        "latency_ms_by_route": {
            route: percentiles(values) | {"n": len(values)} for route, values in sorted(latencies.items())
        },
        # The router node's own decision (acts, write rule and clarification included), the teacher's time out.
        "router_ms": percentiles(
            [d.latency_ms for turn in turns for d in turn.decisions if d.node == "router" and d.strategy != "llm"]
        ),
        "requests_per_second": n / elapsed,
        "routes_taken": {f"{expected}->{route}": count for (expected, route), count in sorted(taken.items())},
    }


def ratio(baseline: float, measured: float) -> float | None:
    return baseline / measured if measured else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-intent", type=int, default=10, help="test requests per intent (0: the whole split)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests served at once (default 1)")
    parser.add_argument("--slm-url", help="a vLLM server instead of the embedded SLM")
    parser.add_argument("--registry", help="serve the models promoted in this model registry (default: none)")
    parser.add_argument(
        "--prices", help="a price table (JSON, see agentgraph report --prices; default: TEACHER_PRICES)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    prices = PriceTable.load(args.prices) if args.prices else TEACHER_PRICES
    rows = sample(args.per_intent)
    random.Random(11).shuffle(rows)  # a mixed workload: concurrent requests are not all of one intent
    teacher = KnowingTeacher(answers={
        clean_text(row.text): {ROUTE_CHOICE: {"intent": row.intent}, SupportTicket.__name__: expected_ticket(row) or {}}
        for row in rows
    })  # fmt: skip
    started = time.perf_counter()
    slm = load_slm(SLMSettings.from_env(url=args.slm_url))
    registry = ModelRegistry(args.registry) if args.registry else None
    runs = {}
    for run, modes in (("small_models", None), ("teacher", NodeModes(default="teacher"))):
        parts = CustomerSupportParts(data_dir=tempfile.mkdtemp(prefix=f"cs-bench-{run}-"), slm=slm, llm=teacher,
                                     extraction_llm=teacher, registry=registry, modes=modes)  # fmt: skip
        graph = compose(parts)
        if run == "small_models":
            load_s = time.perf_counter() - started
            extractor = parts.extraction_artifact["slm"].model_name if parts.extraction_artifact else slm.model_name
            # First-call costs (tokenizer caches) are not per request.
            run_turn(graph, "track order 10001", thread_id="warm-up")
        runs[run] = figures(rows, *serve(graph, parts, rows, args.concurrency), parts, prices)
    small, taught = runs["small_models"], runs["teacher"]
    report = {
        "backend": "vllm" if args.slm_url else "embedded",
        "requests": len(rows),
        "concurrency": args.concurrency,
        "extractor": extractor,
        "load_s": load_s,
        **small,
        "teacher_mode": taught,
        "teacher_over_small_models": {
            "llm_calls": ratio(taught["llm_calls_per_request"], small["llm_calls_per_request"]),
            "llm_tokens": ratio(
                sum(taught["llm_tokens_per_request"].values()), sum(small["llm_tokens_per_request"].values())
            ),
            "cost": ratio(sum(taught["cost_per_request_usd"].values()), sum(small["cost_per_request_usd"].values())),
            "latency_p50_without_llm": ratio(taught["latency_ms"]["p50"], small["latency_ms"]["p50"]),
        },
        "prices": prices.model_dump(),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"backend {report['backend']}, {len(rows)} test requests, {args.concurrency} at once, "
          f"graph loaded in {load_s:.1f} s")  # fmt: skip
    for name, run in (("small models", small), ("teacher mode", taught)):
        print(f"{name}: route accuracy {100 * run['route_accuracy']:.2f}%, intent accuracy "
              f"{100 * run['intent_accuracy']:.2f}%, {run['requests_per_second']:.2f} requests/s")  # fmt: skip
        if run["entity_rows"]:
            print(f"  entity exact match  {100 * run['entity_exact_match']:.2f}% of {run['entity_rows']} lookup and "
                  f"action requests routed right" + (f" (extract: {extractor})" if run is small else ""))  # fmt: skip
        if run["knowledge_section_accuracy"] is not None:
            print(
                f"  knowledge answers   {100 * run['knowledge_section_accuracy']:.2f}% the intent's own policy section"
            )
        tokens = run["llm_tokens_per_request"]
        print(f"  per request         {run['llm_calls_per_request']:.3f} LLM calls, {tokens['prompt']:.0f} + "
              f"{tokens['completion']:.0f} LLM tokens, ${sum(run['cost_per_request_usd'].values()):.7f} "
              f"({100 * run['zero_llm_share']:.1f}% with no LLM call)")  # fmt: skip
        print(f"  latency without the LLM's own time: p50 {run['latency_ms']['p50']:.0f} ms, "
              f"p95 {run['latency_ms']['p95']:.0f} ms")  # fmt: skip
        for route, values in run["latency_ms_by_route"].items():
            print(f"    {route:<10} n={values['n']:<4} p50 {values['p50']:.0f} ms, p95 {values['p95']:.0f} ms")
        if run["router_ms"]:
            print(f"    the router p50 {run['router_ms']['p50']:.1f} ms, p95 {run['router_ms']['p95']:.1f} ms")
        print("  expected -> taken: " + ", ".join(f"{k} {v}" for k, v in run["routes_taken"].items()))
    ratios = report["teacher_over_small_models"]
    print("teacher mode / small models: " + ", ".join(
        f"{name.replace('_', ' ')} x{value:.1f}" if value is not None else f"{name.replace('_', ' ')} (none on the small models)"
        for name, value in ratios.items()))  # fmt: skip


if __name__ == "__main__":
    main()
