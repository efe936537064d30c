"""Sub-commands of the ``agentgraph`` CLI; each module has ``register(subparsers)``."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from agentgraph.errors import AgentGraphError


def open_traces(location: str, hint: str) -> Any:
    """The trace store ``--traces`` names: a ``postgresql://`` URL, or a SQLite file that must exist."""
    from agentgraph.postgres import is_postgres_url
    from agentgraph.records.traces import open_trace_store

    if not is_postgres_url(location) and not Path(location).is_file():
        raise AgentGraphError(f"no trace store at {location}; {hint}")
    return open_trace_store(location)


def login_name() -> str:
    """The terminal user's login name, who answers approvals and reviews; "terminal" where none is known."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no LOGNAME/USER and no passwd entry, as in some containers
        return "terminal"
