"""SQLite connections shared by threads and processes: the decision log, traces, idempotency keys, the example store.

Example:
    >>> from agentgraph.storage import connect_sqlite
    >>> connect_sqlite(":memory:").execute("SELECT 1").fetchone()
    (1,)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_sqlite(path: str | Path, *, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` (its folder created), usable from any thread.

    Autocommit (``isolation_level=None``), so callers open their own
    ``BEGIN IMMEDIATE`` transactions where they need them; WAL mode for a
    file, so readers in other processes never block the writer; writers wait up
    to ``busy_timeout_s`` for another's lock instead of failing at once.
    Callers serialise their own use of the connection across threads.
    """
    name = str(path)
    if name != ":memory:":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(name, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
    if name != ":memory:":
        connection.execute("PRAGMA journal_mode = WAL")
    return connection
