"""Shared fixtures: the real embedded SLM (loaded once per session) and the customer-support data."""

from __future__ import annotations

import pytest

from agentgraph.datasets import SupportRequest, load_customer_support, split_customer_support


@pytest.fixture(scope="session")
def embedded_slm():
    """The packaged SmolLM2-135M-Instruct, in-process (converted on first use, then cached)."""
    from agentgraph.slm import TransformersSLM

    return TransformersSLM()


@pytest.fixture(scope="session")
def support_splits() -> dict[str, list[SupportRequest]]:
    """The fixed-seed train/dev/test split of the Bitext customer-support data."""
    return split_customer_support(load_customer_support())
