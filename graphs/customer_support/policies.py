"""The store's policy documents: their sections, how they are retrieved, and the reranker that cuts them.

The knowledge path answers from ``policies/*.md`` (in this package), one
``##`` section at a time: :class:`PolicyRetriever` finds candidate sections by
embedding similarity and the context pruner reranks them with a cross-encoder
(:func:`support_reranker_folder`) trained on the Bitext requests against their
reference responses (:func:`support_relevance_pairs`) and against these
sections (:func:`policy_relevance_pairs`).

Example:
    >>> from agentgraph.graphs.customer_support.policies import POLICY_SECTION_OF_INTENT, load_policy_sections
    >>> sections = {section.title: section for section in load_policy_sections()}
    >>> set(POLICY_SECTION_OF_INTENT.values()) <= set(sections)
    True
    >>> sections["Payment methods"].document, sections["Payment problems"].document
    ('Payments and invoices', 'Payments and invoices')
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from agentgraph.classifier import SentenceEncoder
from agentgraph.cross_encoder import TRAINING_SEED, RelevancePair, TrainingSettings, cached_cross_encoder
from agentgraph.errors import DatasetError
from agentgraph.graphs.customer_support.bitext import SupportRequest, load_customer_support, split_customer_support


@dataclass(frozen=True)
class PolicySection:
    """One ``##`` section of a policy document: the unit retrieval returns."""

    document: str
    title: str
    text: str


def load_policy_sections(folder: Path | None = None) -> list[PolicySection]:
    """The store's policy documents (``policies/*.md`` in this package), one entry per ``##`` section."""
    sources = sorted(Path(folder).glob("*.md")) if folder else sorted(
        (entry for entry in files("agentgraph.graphs.customer_support").joinpath("policies").iterdir()
         if entry.name.endswith(".md")),
        key=lambda entry: entry.name,
    )  # fmt: skip
    sections = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        heading = re.search(r"^# (.+)$", text, re.MULTILINE)
        if heading is None:
            raise DatasetError(f"policy {source.name} has no '# title' line")
        document = heading[1]
        for title, body in re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL):
            sections.append(PolicySection(document=document, title=title.strip(), text=" ".join(body.split())))
    return sections


class PolicyRetriever:
    """Policy sections by embedding similarity (all-MiniLM-L6-v2): the candidates the context pruner reranks."""

    def __init__(self, sections: list[PolicySection], encoder: SentenceEncoder) -> None:
        self.sections = sections
        self.encoder = encoder
        self._embeddings = encoder.encode([f"{s.title}. {s.text}" for s in sections])

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        similarity = self._embeddings @ self.encoder.encode_one(query)
        best = np.argsort(-similarity)[:k]
        return [
            {"text": self.sections[i].text, "title": self.sections[i].title, "document": self.sections[i].document,
             "similarity": float(similarity[i])}
            for i in best
        ]  # fmt: skip


POLICY_SECTION_OF_INTENT: dict[str, str] = {
    "check_refund_policy": "Refund policy",
    "check_payment_methods": "Payment methods",
    "delivery_options": "Delivery options",
    "check_cancellation_fee": "Cancellation fees",
    "place_order": "Placing an order",
    "payment_issue": "Payment problems",
    "create_account": "Creating an account",
    "edit_account": "Editing your account",
    "switch_account": "Account plans",
    "recover_password": "Forgotten password",
    "registration_problems": "Registration problems",
    "newsletter_subscription": "Newsletter",
    "set_up_shipping_address": "Shipping addresses",
    "review": "Reviews and feedback",
    "contact_customer_service": "Contacting customer service",
}
"""The policy section written to answer each knowledge intent."""


def support_relevance_pairs(
    rows: Sequence[SupportRequest],
    *,
    max_queries: int = 400,
    negatives_per_query: int = 2,
    seed: int = TRAINING_SEED,
) -> list[RelevancePair]:
    """Relevance pairs from customer-support requests and their reference responses.

    For each of up to ``max_queries`` requests (sampled with ``seed``): one
    positive, a reference response written for another request of the same
    intent (the reranker must learn intent relevance, not recognise a
    request's own answer), and ``negatives_per_query`` negatives, responses of
    other intents, half of them (rounded up) from the same category, where
    they are hardest to tell apart.
    """
    if negatives_per_query < 1:
        raise ValueError("negatives_per_query must be at least 1")
    by_intent: dict[str, list[SupportRequest]] = defaultdict(list)
    for row in rows:
        by_intent[row.intent].append(row)
    if len(by_intent) < 2:
        raise ValueError("relevance pairs need requests of at least two intents")
    intents_by_category: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        intents_by_category[row.category].add(row.intent)

    rng = random.Random(seed)
    queries = rng.sample(list(rows), min(max_queries, len(rows)))
    pairs: list[RelevancePair] = []
    for query in queries:
        same_intent = [row for row in by_intent[query.intent] if row is not query] or [query]
        pairs.append(RelevancePair(query=query.text, passage=rng.choice(same_intent).response, label=1.0))
        near_intents = sorted(intents_by_category[query.category] - {query.intent})
        far_intents = sorted(set(by_intent) - {query.intent} - set(near_intents))
        hard = (negatives_per_query + 1) // 2 if near_intents else 0
        for position in range(negatives_per_query):
            pool = near_intents if position < hard else (far_intents or near_intents)
            negative = rng.choice(by_intent[rng.choice(pool)])
            pairs.append(RelevancePair(query=query.text, passage=negative.response, label=0.0))
    return pairs


def policy_relevance_pairs(
    rows: Sequence[SupportRequest],
    sections: Sequence[PolicySection],
    *,
    per_intent: int = 40,
    negatives_per_query: int = 3,
    seed: int = TRAINING_SEED,
) -> list[RelevancePair]:
    """Requests of the knowledge intents against the store's own policy sections.

    For up to ``per_intent`` requests of each intent in
    :data:`POLICY_SECTION_OF_INTENT` (sampled with ``seed``): the section
    written for it is relevant; ``negatives_per_query`` other sections are not,
    the first from the same document, where sections are hardest to tell apart
    ("Payment methods" against "Payment problems").
    """
    by_title = {section.title: section for section in sections}
    rng = random.Random(seed)
    pairs: list[RelevancePair] = []
    for intent, title in POLICY_SECTION_OF_INTENT.items():
        answer = by_title[title]
        same_document = [s for s in sections if s.document == answer.document and s is not answer]
        elsewhere = [s for s in sections if s.document != answer.document]
        requests = [row for row in rows if row.intent == intent]
        for request in rng.sample(requests, min(per_intent, len(requests))):
            negatives = rng.sample(same_document, min(1, len(same_document)))
            negatives += rng.sample(elsewhere, negatives_per_query - len(negatives))
            pairs.append(RelevancePair(query=request.text, passage=answer.text, label=1.0))
            pairs += [RelevancePair(query=request.text, passage=s.text, label=0.0) for s in negatives]
    return pairs


def support_reranker_folder(*, settings: TrainingSettings | None = None) -> Path:
    """The context pruner's cross-encoder, trained on first use and cached (:func:`cached_cross_encoder`).

    Trained on the fixed-seed train split only (the test split stays held out
    for the benchmarks): 1,200 requests against reference responses (relevant:
    one of the same intent; three of other intents are not) and up to 600
    requests against the policy sections (:func:`policy_relevance_pairs`), so
    it ranks the passages this graph retrieves, not only Bitext's. A reranker
    trained on the responses alone put "Payment problems" above "Payment
    methods" for "which payment methods can I use?".
    """
    train = split_customer_support(load_customer_support())["train"]
    pairs = support_relevance_pairs(train, max_queries=1200, negatives_per_query=3)
    pairs += policy_relevance_pairs(train, load_policy_sections())
    return cached_cross_encoder("customer-support", pairs, settings=settings, training_seconds=350)
