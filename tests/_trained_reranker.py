"""The example's cross-encoder, shared by the reranker, pruner and kernel tests.

The suite needs the example graph's reranker anyway (every graph test loads it; it is
trained on first use and cached, :func:`support_reranker_folder`), so the reranker tests
score with that one instead of fine-tuning a smaller one of their own: one training per
session, not two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentgraph.graphs.customer_support.policies import support_reranker_folder


@pytest.fixture(scope="session")
def trained_reranker_folder() -> Path:
    """The example's reranker: MiniLM fine-tuned with the default settings on train-split pairs."""
    return support_reranker_folder()
