"""Router benchmark: the trained classifier, out-of-scope detection, latency, and zero-shot SLM routing.

Run: ``python benchmarks/router.py [--slm-rows 200] [--json]``

1. The customer-support classifier (train and dev splits; calibration, gate
   and out-of-scope thresholds on their cross-fitted scores) on the test
   split: accuracy, coverage at the gate, selective accuracy, and the
   escalation rate of the unrelated-domain requests in ``benchmarks/data/unrelated_requests.jsonl``; the same figures on
   ``benchmarks/data/natural_requests.jsonl``, requests in plain customer
   language (short, typos, order numbers) written apart from the Bitext data
   and never used to tune the classifier: a blind check that it generalises
   beyond the Bitext phrasing.
2. Decision latency, one request at a time through :class:`Router.decide`:
   wall-clock and process CPU time (the CPU time is what the router costs; the
   wall time also counts waiting for a core on a shared machine, so the 1-minute
   load average is reported with them).
3. Unseen intents: whole intent categories (drawn with a fixed seed) are held
   out of training and dev; their test requests should escalate, while the
   remaining intents' test requests keep their coverage.
4. Zero-shot SLM routing over the 27 intents on a sample of the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier, SentenceEncoder
from agentgraph.commands.eval import read_labelled
from agentgraph.graphs.customer_support import CUSTOMER_SUPPORT_INTENTS, support_router_path, train_support_router
from agentgraph.graphs.customer_support.bitext import SPLIT_SEED, load_customer_support, split_customer_support
from agentgraph.routing import ClassifierStrategy, Router, SLMStrategy, evaluate_router

UNRELATED = Path(__file__).parent / "data" / "unrelated_requests.jsonl"
NATURAL = Path(__file__).parent / "data" / "natural_requests.jsonl"


def latency(router: Router, texts: list[str]) -> dict[str, float]:
    wall, cpu = [], []
    for text in texts:
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        router.decide(text)
        wall.append((time.perf_counter() - started_wall) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return {
        "wall_ms_p50": float(np.percentile(wall, 50)),
        "wall_ms_p95": float(np.percentile(wall, 95)),
        "cpu_ms_p50": float(np.percentile(cpu, 50)),
        "cpu_ms_p95": float(np.percentile(cpu, 95)),
        "load_average_1m": os.getloadavg()[0],
    }


def held_out_categories(splits, encoder: SentenceEncoder, unrelated, categories: int) -> dict:
    names = sorted({r.category for r in splits["train"]})
    held = sorted(random.Random(SPLIT_SEED).sample(names, categories))
    unseen = sorted({r.intent for r in splits["train"] if r.category in held})
    router = Router([ClassifierStrategy(train_support_router(encoder=encoder, exclude_intents=unseen))])
    seen_rows = [(r.text, r.intent) for r in splits["test"] if r.intent not in unseen]
    unseen_rows = [(r.text, OUT_OF_SCOPE) for r in splits["test"] if r.intent in unseen]
    seen, novel, other = (evaluate_router(router, rows) for rows in (seen_rows, unseen_rows, unrelated))
    return {
        "held_out_categories": held,
        "held_out_intents": unseen,
        "in_scope_coverage": seen.coverage,
        "in_scope_selective_accuracy": seen.selective_accuracy,
        "unseen_intent_escalation_rate": novel.oos_escalation_rate,
        "unseen_intent_requests": novel.out_of_scope,
        "unrelated_escalation_rate": other.oos_escalation_rate,
    }


def slm_zero_shot(splits, rows: int) -> dict:
    from agentgraph.slm import TransformersSLM

    sample = random.Random(SPLIT_SEED).sample(splits["test"], rows)
    strategy = SLMStrategy(TransformersSLM(num_threads=1), CUSTOMER_SUPPORT_INTENTS)
    result = evaluate_router(Router([strategy]), [(r.text, r.intent) for r in sample])
    return {"rows": rows, "model": strategy.slm.model_name, **result.model_dump(exclude={"in_scope", "out_of_scope"})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slm-rows", type=int, default=200, help="test rows for zero-shot SLM routing (0 skips)")
    parser.add_argument("--held-out-categories", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    splits = split_customer_support(load_customer_support())
    unrelated = read_labelled(UNRELATED)
    encoder = SentenceEncoder()
    classifier = IntentClassifier.load(support_router_path(), encoder=encoder)
    router = Router([ClassifierStrategy(classifier)])
    test_rows = [(r.text, r.intent) for r in splits["test"]]
    report = {
        "classifier": evaluate_router(router, test_rows).model_dump(exclude={"latency_ms_p50", "latency_ms_p95"}),
        "unrelated_escalation_rate": evaluate_router(router, unrelated).oos_escalation_rate,
        "natural_requests": evaluate_router(router, read_labelled(NATURAL)).model_dump(
            exclude={"latency_ms_p50", "latency_ms_p95"}
        ),
        "latency": latency(router, [text for text, _ in test_rows]),
        "unseen_intents": held_out_categories(splits, encoder, unrelated, args.held_out_categories),
    }
    if args.slm_rows:
        report["slm_zero_shot"] = slm_zero_shot(splits, args.slm_rows)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
