"""PostgreSQL for the stores that several workers share: connections, URLs in messages, and advisory locks.

The trace store and decision log (:mod:`agentgraph.records.traces`,
:mod:`agentgraph.records.decisions`), the idempotency store
(:mod:`agentgraph.idempotency`), the checkpointer
(:func:`agentgraph.checkpointing.postgres_checkpointer`) and the per-thread
turn lock (:func:`agentgraph.running.hold_thread`) all take a
``postgresql://`` URL. psycopg 3 is an optional dependency:
``pip install 'agentgraph[postgres]'``.

Two workers that start at once both create the tables they need; PostgreSQL's
``CREATE TABLE IF NOT EXISTS`` is not safe against a concurrent twin (one of
them fails on the catalog's unique index), so every store creates its schema
under :func:`setup_lock`, one advisory lock all of them share.

Example:
    >>> from agentgraph.postgres import advisory_key, describe_url, is_postgres_url
    >>> is_postgres_url("postgresql://agent:secret@db:5432/agent"), is_postgres_url("decisions.db")
    (True, False)
    >>> describe_url("postgresql://agent:secret@db:5432/agent")
    'postgresql://agent@db:5432/agent'
    >>> advisory_key("thread", "t1") == advisory_key("thread", "t1") != advisory_key("thread", "t2")
    True
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from agentgraph.errors import ConfigError

if TYPE_CHECKING:
    # The type checker sees the mixin's place in the MRO; at run time records imports this module, not the reverse.
    from agentgraph.records.decisions import SQLStore as _DialectBase
else:
    _DialectBase = object

URL_SCHEMES = ("postgresql://", "postgres://")

DATABASE_URL_ENV = "AGENTGRAPH_DATABASE_URL"
"""The environment variable naming the PostgreSQL database the example graph's workers share."""


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` (a path or a URL) names a PostgreSQL database."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def describe_url(url: str) -> str:
    """``url`` fit for a message or a log: the password dropped, everything else kept."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, **options: Any):
    """An autocommit psycopg connection to ``url`` (callers open their own transactions where they need them)."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is in the test extra
        raise ConfigError(
            f"{describe_url(url)} is a PostgreSQL database: install its driver with pip install 'agentgraph[postgres]'"
        ) from exc
    return psycopg.connect(url, autocommit=True, **options)


def advisory_key(namespace: str, name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` in ``namespace`` (a hash: the name may hold anything)."""
    digest = hashlib.sha256(f"agentgraph:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


SETUP_LOCK = advisory_key("setup", "schema")
"""The advisory lock every agentgraph store holds while it creates its tables."""


_SETUP_POLL_S = 0.05
SETUP_WAIT_S = 300.0
"""How long a store waits for another worker to finish creating tables before it gives up."""


@contextmanager
def holding_setup_lock(connection: Any) -> Iterator[None]:
    """Hold :data:`SETUP_LOCK` on ``connection`` (autocommit) for the block.

    Taken by polling ``pg_try_advisory_lock`` between transactions rather than by waiting in one:
    LangGraph's migrations ``CREATE INDEX CONCURRENTLY``, which waits for every open transaction,
    so a worker waiting for the lock inside one would deadlock with the worker holding it.
    """
    from psycopg.rows import tuple_row

    deadline = time.monotonic() + SETUP_WAIT_S
    cursor = connection.cursor(row_factory=tuple_row)  # whatever rows the connection makes (LangGraph's: dicts)
    while not cursor.execute("SELECT pg_try_advisory_lock(%s)", (SETUP_LOCK,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"another worker has been creating agentgraph's tables for {SETUP_WAIT_S:g} s; look for a stuck "
                f"session holding advisory lock {SETUP_LOCK} in pg_locks"
            )
        time.sleep(_SETUP_POLL_S)
    try:
        yield
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))


def create_tables(connection: Any, statements: Iterable[str]) -> None:
    """Run ``statements`` (``CREATE ... IF NOT EXISTS``) in one transaction of ``connection``, under :data:`SETUP_LOCK`."""
    with holding_setup_lock(connection), connection.transaction():
        for statement in statements:
            connection.execute(statement)


@contextmanager
def setup_lock(url: str) -> Iterator[None]:
    """Hold :data:`SETUP_LOCK` on a connection of its own for the block: one worker creates tables at a time.

    Not reentrant across connections: a block that holds it must not open a store that takes it again.
    """
    with connect(url) as connection, holding_setup_lock(connection):
        yield


class PostgresDialect(_DialectBase):
    """Mixed into an :class:`agentgraph.records.decisions.SQLStore`: a connection to a URL, psycopg's placeholders, and
    tables created under :data:`SETUP_LOCK` (workers that start at once create them one after another)."""

    _placeholder = "%s"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(connect(url), describe_url(url), **options)

    def _create_tables(self, statements: Sequence[str]) -> None:
        create_tables(self._conn, statements)
