"""Router recipes measured against each other: what each part of the example router's training buys on real-style traffic.

Run: ``python benchmarks/router_recipes.py [--recipes bitext,phrasings,default,...] [--json]``

Each recipe trains the example's classifier differently (about two minutes
each on two cores) and is scored the same ways:

- cross-fitted, on the hand-written training phrasings (``graphs/customer_support/data``): the
  coverage the gate leaves at its selective accuracy, the figure the recipes'
  settings were chosen on (the stress set below was never used to choose);
- on the stress set of ``benchmarks/real_traffic.py`` (classifier alone, so
  the recipes compare; the act detector and clarifying questions come on top
  of any of them) and on the Bitext test split.

Recipes (:data:`RECIPES`): ``bitext`` (the previous router: Bitext requests
only, gate fitted on them), ``phrasings`` (plus the phrasings and the
out-of-scope class), ``augmented`` (plus one perturbed copy of each Bitext
request, gate on all), ``default`` (the example's: the gate fitted on the
realistic sources only, character n-grams at full weight), ``no_augmentation``
and ``two_copies`` (the default with zero or two perturbed copies),
``lexical_0.3`` (the default with the n-grams at the earlier weight).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agentgraph.classifier import IntentClassifier, SentenceEncoder
from agentgraph.graphs import customer_support
from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.routing import ClassifierStrategy, Router

sys.path.insert(0, str(Path(__file__).parent))
import real_traffic  # noqa: E402  (the stress set and its scores)

BITEXT_ONLY = {"lexical_weight": 0.3, "target_selective_accuracy": 0.998, "max_gate_rejection": 0.03}
RECIPES: dict[str, dict[str, Any]] = {
    "bitext": {"sources": ("bitext",), "copies": 0, "fit": None, "settings": BITEXT_ONLY},
    "phrasings": {"sources": ("bitext", "phrasings", "out_of_scope"), "copies": 0, "fit": None,
                  "settings": {**customer_support.ROUTER_SETTINGS, "lexical_weight": 0.3}},
    "augmented": {"sources": None, "copies": 1, "fit": None, "settings": {**customer_support.ROUTER_SETTINGS, "lexical_weight": 0.3}},
    "default": {"sources": None, "copies": customer_support.AUGMENTED_COPIES, "fit": customer_support.REALISTIC_SOURCES,
                "settings": customer_support.ROUTER_SETTINGS},
    "no_augmentation": {"sources": None, "copies": 0, "fit": customer_support.REALISTIC_SOURCES,
                        "settings": customer_support.ROUTER_SETTINGS},
    "two_copies": {"sources": None, "copies": 2, "fit": customer_support.REALISTIC_SOURCES,
                   "settings": customer_support.ROUTER_SETTINGS},
    "lexical_0.3": {"sources": None, "copies": customer_support.AUGMENTED_COPIES, "fit": customer_support.REALISTIC_SOURCES,
                    "settings": {**customer_support.ROUTER_SETTINGS, "lexical_weight": 0.3}},
}  # fmt: skip


def train(recipe: dict[str, Any], encoder: SentenceEncoder) -> IntentClassifier:
    rows = customer_support.router_training_rows(copies=recipe["copies"])
    if recipe["sources"] is not None:
        rows = [row for row in rows if row[3] in recipe["sources"]]
    texts, labels, groups, sources = zip(*rows, strict=True)
    return IntentClassifier.train(texts, labels, groups=groups, sources=sources, fit_sources=recipe["fit"],
                                  encoder=encoder, **recipe["settings"])  # fmt: skip


def measure(classifier: IntentClassifier, messages, bitext) -> dict[str, Any]:
    router = Router([ClassifierStrategy(classifier)], routes=customer_support.ROUTES)
    phrasings = classifier.manifest.metrics.get("by_source", {}).get("phrasings")
    return {
        "phrasings_cross_fitted": phrasings,
        "stress_set": real_traffic.score(real_traffic.route_all(router, messages)),
        "stress_hand_written": real_traffic.score(real_traffic.route_all(router, [m for m in messages
                                                                                    if m.group == "hand_written"])),
        "bitext_test": real_traffic.score(real_traffic.route_all(router, bitext)),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    encoder = SentenceEncoder()
    messages = real_traffic.stress_set()
    test = split_customer_support(load_customer_support())["test"]
    bitext = [real_traffic.StressMessage(text=r.text, label=r.intent, group="bitext", kind="clean",
                                         requests_write=False) for r in test]  # fmt: skip
    report = {name: measure(train(RECIPES[name], encoder), messages, bitext) for name in args.recipes.split(",")}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'recipe':16s} {'phrasings cov@sel (x-fit)':>26s} {'stress top1':>11s} {'answered':>9s} {'selective':>9s} "
          f"{'OOS esc':>8s} {'hand top1':>9s} {'hand ans':>8s} {'hand sel':>8s} {'bitext ans':>10s} {'bitext sel':>10s}")  # fmt: skip
    for name, figures in report.items():
        x, stress, hand, clean = (figures[k] for k in ("phrasings_cross_fitted", "stress_set", "stress_hand_written",
                                                        "bitext_test"))  # fmt: skip
        crossed = (
            f"{x['out_of_fold_coverage']:>13.1%} @ {x['out_of_fold_selective_accuracy']:<10.1%}"
            if x
            else f"{'not trained on':>26s}"
        )
        print(f"{name:16s} {crossed} "
              f"{stress['intent_top1']:>11.1%} {stress['answered']:>9.1%} {stress['selective_accuracy']:>9.1%} "
              f"{stress['oos_escalation']:>8.1%} {hand['intent_top1']:>9.1%} {hand['answered']:>8.1%} "
              f"{hand['selective_accuracy']:>8.1%} {clean['answered']:>10.1%} {clean['selective_accuracy']:>10.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
