"""A small cross-encoder fine-tuned once per test session, shared by the reranker and pruner tests.

Imported as a fixture by both test modules; it trains into the session's base
temp folder, so the second module finds the first one's model instead of
training again.
"""

from __future__ import annotations

import pytest

from agentgraph.cross_encoder import TRAINING_INFO, train_cross_encoder
from agentgraph.graphs.customer_support.policies import support_relevance_pairs

TINY_QUERIES = 480
"""60 steps of the default 8 queries, about 90 s on two cores; half as many stay near chance on held-out requests."""
TINY_NEGATIVES = 3


@pytest.fixture(scope="session")
def tiny_reranker_folder(tmp_path_factory, support_splits):
    """MiniLM fine-tuned (default settings) on 480 train requests, each with 1 relevant and 3 irrelevant responses."""
    folder = tmp_path_factory.getbasetemp() / "tiny-reranker"
    if not (folder / TRAINING_INFO).is_file():
        pairs = support_relevance_pairs(
            support_splits["train"], max_queries=TINY_QUERIES, negatives_per_query=TINY_NEGATIVES
        )
        train_cross_encoder(pairs, output_dir=folder)
    return folder
