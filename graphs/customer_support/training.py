"""How the example's classifiers are trained: the router's, and the act detector's.

Real customer messages are short, misspelled, code-mixed and often not
requests at all. The classifier (:func:`train_support_router`) therefore
learns from more than the Bitext requests: phrasings written for this project
in the way customers type (``data/router_phrasings.jsonl``: fragments,
typos, chat abbreviations, Hinglish and other code-mixing), perturbed variants
of the Bitext requests (:func:`agentgraph.perturb.realistic`), and
out-of-scope messages as a class of their own (``data/out_of_scope.jsonl``:
product and stock questions, other domains, greetings, gibberish, bare ids).
Its temperature, gate and out-of-scope thresholds are fitted on the
cross-fitted scores of those realistic sources, not on the clean Bitext ones.
Nothing here comes from public intent or dialogue data sets.

The act detector (:func:`support_act_detector`) is trained on the example's own
labelled messages (``data/message_acts.jsonl``) with a balanced sample of
requests. Both are trained on first use and cached in ``cache_dir()/artifacts``,
retrained when their data or recipe changed.

Example:
    >>> from collections import Counter
    >>> from agentgraph.classifier import OUT_OF_SCOPE
    >>> from agentgraph.graphs.customer_support.training import router_training_rows
    >>> rows = router_training_rows()
    >>> sorted(Counter(source for *_, source in rows))
    ['augmented', 'bitext', 'out_of_scope', 'phrasings']
    >>> {label for _, label, _, source in rows if source == "out_of_scope"} == {OUT_OF_SCOPE}
    True
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from agentgraph.acts import ActDetector
from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier, SentenceEncoder, cached_classifier
from agentgraph.datasets import read_records
from agentgraph.graphs.customer_support.bitext import (
    CUSTOMER_SUPPORT_INTENTS,
    customer_support_csv,
    load_customer_support,
    split_customer_support,
)
from agentgraph.perturb import realistic
from agentgraph.slm.models import cache_dir

AUGMENT_SEED = 20261202
AUGMENTED_COPIES = 1
"""Perturbed variants of each Bitext training request (:func:`agentgraph.perturb.realistic`)."""
REALISTIC_SOURCES = ("phrasings", "augmented", "out_of_scope")
"""The training sources most like live traffic: the gate and the out-of-scope thresholds are fitted on them."""
ROUTER_SETTINGS: dict[str, Any] = {
    "lexical_weight": 1.0,
    "target_selective_accuracy": 0.97,
    "max_gate_rejection": 0.5,
}
"""The classifier's settings: character n-grams at full weight (they read misspelt and code-mixed words), a gate
that keeps 97% of the accepted realistic requests right."""


def router_training_rows(
    exclude_intents: Sequence[str] = (), *, copies: int = AUGMENTED_COPIES
) -> list[tuple[str, str, int, str]]:
    """``(text, label, group, source)`` rows the router learns from (train and dev splits; the test split stays out).

    Each Bitext request comes with ``copies`` perturbed variants, in its group,
    so cross-fitting holds them out together.
    """
    excluded = set(exclude_intents)
    splits = split_customer_support(load_customer_support())
    rng = random.Random(AUGMENT_SEED)
    rows: list[tuple[str, str, int, str]] = []
    for group, request in enumerate(r for r in splits["train"] + splits["dev"] if r.intent not in excluded):
        rows.append((request.text, request.intent, group, "bitext"))
        rows += [(realistic(request.text, rng), request.intent, group, "augmented") for _ in range(copies)]
    extra = [(r["text"], r["label"], "phrasings") for r in read_records(example_data("router_phrasings"))]
    extra += [(r["text"], OUT_OF_SCOPE, "out_of_scope") for r in read_records(example_data("out_of_scope"))]
    start = len(rows)
    rows += [(text, label, start + i, source) for i, (text, label, source) in enumerate(extra) if label not in excluded]
    return rows


def train_support_router(
    *, encoder: SentenceEncoder | None = None, exclude_intents: Sequence[str] = ()
) -> IntentClassifier:
    """Train the example's classifier (optionally without some intents, to study out-of-scope detection)."""
    texts, labels, groups, sources = zip(*router_training_rows(exclude_intents), strict=True)
    return IntentClassifier.train(
        texts, labels, groups=groups, sources=sources, fit_sources=REALISTIC_SOURCES, encoder=encoder,
        descriptions={k: v for k, v in CUSTOMER_SUPPORT_INTENTS.items() if k not in set(exclude_intents)},
        **ROUTER_SETTINGS,
    )  # fmt: skip


def support_router_path(*, rebuild: bool = False) -> Path:
    """The classifier the example graph routes with, trained on first use (about a minute on two cores).

    Kept in ``cache_dir()/artifacts/router/customer-support`` and retrained when
    its data, its recipe, the format or the encoder changed.
    """
    recipe = json.dumps([AUGMENT_SEED, AUGMENTED_COPIES, REALISTIC_SOURCES, ROUTER_SETTINGS])
    sha256 = _data_sha256(f"router:{recipe}", "router_phrasings", "out_of_scope")
    return cached_classifier(cache_dir() / "artifacts" / "router" / "customer-support", sha256, train_support_router,
                             rebuild=rebuild, training_seconds=60)  # fmt: skip


def _data_sha256(recipe: str, *example_files: str) -> str:
    """The digest of the Bitext file, the example's data files named and the training recipe."""
    digest = hashlib.sha256(recipe.encode())
    for path in (customer_support_csv(), *(example_data(name) for name in example_files)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


ACT_SAMPLE_SEED = 20261201
REQUESTS_PER_SOURCE = 150
"""Requests sampled from the Bitext train split and from the example's phrasings each: the act classes stay balanced."""


def example_data(name: str) -> Path:
    """A data file written for the example (``data/NAME.jsonl`` in this package)."""
    return Path(str(files("agentgraph.graphs.customer_support").joinpath("data", f"{name}.jsonl")))


def act_training_rows() -> list[tuple[str, str]]:
    """``(text, act)`` pairs: the labelled messages, the social out-of-scope ones, and a sample of requests."""
    rows = [(r["text"], r["act"]) for r in read_records(example_data("message_acts"))]
    rows += [(r["text"], "social") for r in read_records(example_data("out_of_scope")) if r.get("kind") == "social"]
    rng = random.Random(ACT_SAMPLE_SEED)
    bitext = split_customer_support(load_customer_support())["train"]
    phrasings = read_records(example_data("router_phrasings"))
    rows += [(r.text, "request") for r in rng.sample(bitext, REQUESTS_PER_SOURCE)]
    rows += [(r["text"], "request") for r in rng.sample(phrasings, REQUESTS_PER_SOURCE)]
    return rows


def train_support_acts(*, encoder: SentenceEncoder | None = None) -> IntentClassifier:
    """Train the act classifier of :func:`support_act_detector` on :func:`act_training_rows`."""
    texts, acts = zip(*act_training_rows(), strict=True)
    return ActDetector.train(texts, acts, encoder=encoder).classifier


def support_act_detector_path(*, rebuild: bool = False) -> Path:
    """The example's act classifier, trained on first use (~8 s), kept in ``cache_dir()/artifacts/acts``."""
    sha256 = _data_sha256(f"acts-v1:{ACT_SAMPLE_SEED}:{REQUESTS_PER_SOURCE}", "message_acts", "out_of_scope",
                          "router_phrasings")  # fmt: skip
    return cached_classifier(cache_dir() / "artifacts" / "acts" / "customer-support", sha256, train_support_acts,
                             rebuild=rebuild, training_seconds=8)  # fmt: skip


def support_act_detector(encoder: SentenceEncoder | None = None) -> ActDetector:
    """The example's act detector, on ``encoder`` (share the router's: the embedding is then computed once)."""
    return ActDetector.load(support_act_detector_path(), encoder=encoder)
