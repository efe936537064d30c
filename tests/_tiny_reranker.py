"""A small cross-encoder fine-tuned once per test session, shared by the reranker and pruner tests.

Imported as a fixture by both test modules; it trains into the session's base
temp folder, so the second module finds the first one's model instead of
training again.
"""

from __future__ import annotations

import pytest

from agentgraph.cross_encoder import TRAINING_INFO, TrainingSettings, support_relevance_pairs, train_cross_encoder


@pytest.fixture(scope="session")
def tiny_reranker_folder(tmp_path_factory, support_splits):
    """MiniLM fine-tuned on 180 train-split pairs (64 tokens, 2 epochs): enough to prove the mechanism."""
    folder = tmp_path_factory.getbasetemp() / "tiny-reranker"
    if not (folder / TRAINING_INFO).is_file():
        pairs = support_relevance_pairs(support_splits["train"], max_queries=60, negatives_per_query=2)
        train_cross_encoder(
            pairs, output_dir=folder, settings=TrainingSettings(max_length=64, epochs=2, learning_rate=1e-4)
        )
    return folder
