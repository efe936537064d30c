"""A durable idempotency store with Stripe's semantics, for tool calls that must not run twice.

A caller reserves a key before it runs a side effect and records the outcome
after. The same key with the same arguments then returns the recorded outcome
without running again; the same key with other arguments is an error
(:class:`~agentgraph.errors.IdempotencyKeyReuseError`); a duplicate while the
first is still running is a conflict
(:class:`~agentgraph.errors.IdempotencyConflictError`); keys are forgotten after
a retention window.

A reservation holds a lease. A worker that dies between running the side effect
and recording it leaves its key in flight; once the lease has run out the key
is *stale*. Whether a stale key may run again depends on the caller, so
:meth:`IdempotencyStore.begin` is told: ``recover_stale=True`` hands the key
to the new worker (right for tools that use the key in their own write, so a
second run is a no-op), ``recover_stale=False`` raises
:class:`~agentgraph.errors.IdempotencyOutcomeUnknownError` (a person must look).
Choose a lease longer than the slowest tool call: a lease that runs out while
the first worker is still busy lets a second one in.

Two backends share one implementation: :class:`SQLiteIdempotencyStore` (the
default, one file, safe across threads and processes) and
:class:`PostgresIdempotencyStore` (psycopg 3, ``pip install 'agentgraph[postgres]'``).

Example:
    >>> from agentgraph.idempotency import SQLiteIdempotencyStore, request_fingerprint
    >>> store = SQLiteIdempotencyStore(":memory:")
    >>> fingerprint = request_fingerprint("refund", {"order_id": "A1", "amount": 5})
    >>> first = store.begin("refund-A1", fingerprint)
    >>> first.started
    True
    >>> store.complete(first, {"refund_id": 7})
    >>> again = store.begin("refund-A1", fingerprint)
    >>> again.started, again.record.result
    (False, {'refund_id': 7})
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from agentgraph.errors import (
    IdempotencyConflictError,
    IdempotencyKeyReuseError,
    IdempotencyOutcomeUnknownError,
)
from agentgraph.storage import connect_sqlite

KeyStatus = Literal["in_flight", "completed", "failed"]

DEFAULT_RETENTION_S = 24 * 3600.0
DEFAULT_LEASE_S = 300.0

_COLUMN_NAMES = (
    "key",
    "request_hash",
    "status",
    "token",
    "result",
    "attempts",
    "created_at",
    "updated_at",
    "lease_expires_at",
    "expires_at",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS idempotency_keys ("
    " key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, status TEXT NOT NULL, token TEXT, result TEXT,"
    " attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " lease_expires_at DOUBLE PRECISION, expires_at DOUBLE PRECISION NOT NULL)"
)


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces, so equal arguments give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_fingerprint(tool: str, arguments: Mapping[str, Any]) -> str:
    """What a key is bound to: the tool and its arguments (key order does not matter)."""
    return hashlib.sha256(canonical_json({"tool": tool, "arguments": arguments}).encode()).hexdigest()


def derive_idempotency_key(thread_id: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """The key of a call when the caller gives none: the same thread, tool and arguments give the same key."""
    return hashlib.sha256(
        canonical_json({"thread": thread_id, "tool": tool, "arguments": arguments}).encode()
    ).hexdigest()


class IdempotencyRecord(BaseModel):
    """What the store knows about one key."""

    key: str
    request_hash: str
    status: KeyStatus
    result: Any = Field(default=None, description="the recorded outcome (completed) or error (failed)")
    attempts: int = Field(description="how many workers have held the key")
    created_at: float
    updated_at: float
    lease_expires_at: float | None = Field(description="while in flight: when the holder is presumed dead")
    expires_at: float = Field(description="when the key is forgotten")


class Reservation(BaseModel):
    """The answer to :meth:`IdempotencyStore.begin`.

    ``started``: the caller holds the key and must run the call, then
    :meth:`~IdempotencyStore.complete`, :meth:`~IdempotencyStore.fail` or
    :meth:`~IdempotencyStore.release` it. Otherwise ``record`` holds the outcome
    recorded by an earlier run, to return as is.
    """

    key: str
    started: bool
    recovered: bool = Field(default=False, description="started by taking over a stale key")
    token: str | None = Field(default=None, description="proves the holder when it records the outcome")
    record: IdempotencyRecord | None = None


class IdempotencyStore(Protocol):
    """Durable keys for calls that must take effect at most once."""

    def begin(self, key: str, request_hash: str, *, recover_stale: bool = True) -> Reservation:
        """Reserve ``key`` for a call with ``request_hash``, or return what an earlier call recorded."""
        ...

    def complete(self, reservation: Reservation, result: Any) -> None:
        """Record the call's result; the same key and arguments return it from now on."""
        ...

    def fail(self, reservation: Reservation, error: Any) -> None:
        """Record that the call failed; the same key and arguments return the failure, never run again."""
        ...

    def release(self, reservation: Reservation) -> None:
        """Forget a reservation whose call may run again (it failed before or without taking effect)."""
        ...

    def get(self, key: str) -> IdempotencyRecord | None:
        """The key's record, or None when it is unknown or expired."""
        ...

    def purge_expired(self) -> int:
        """Delete the keys past their retention window; returns how many."""
        ...


class SQLIdempotencyStore(ABC):
    """The store's rules over one SQL table; a backend supplies the connection and its transactions.

    Every decision of :meth:`begin` happens in one transaction that holds the
    key's row (or, in SQLite, the whole database) locked, so two workers can
    never both start the same key.
    """

    _placeholder = "?"
    _lock_clause = ""

    def __init__(
        self,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_s <= 0 or retention_s < lease_s:
            raise ValueError("need 0 < lease_s <= retention_s")
        self.retention_s = retention_s
        self.lease_s = lease_s
        self.clock = clock
        self._lock = threading.Lock()

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Callable[[str, tuple], Any]]:
        """A transaction that takes the write lock; yields ``execute(sql, params) -> cursor``."""

    def _sql(self, query: str) -> str:
        return query.replace("?", self._placeholder)

    def begin(self, key: str, request_hash: str, *, recover_stale: bool = True) -> Reservation:
        now = self.clock()
        token = uuid.uuid4().hex
        with self._transaction() as execute:
            record = self._locked_record(execute, key)
            if record is not None and self._expired(record, now):
                execute(self._sql("DELETE FROM idempotency_keys WHERE key = ?"), (key,))
                record = None
            if record is None:
                inserted = execute(
                    self._sql(
                        f"INSERT INTO idempotency_keys ({_COLUMNS}) VALUES (?, ?, 'in_flight', ?, NULL, 1, ?, ?, ?, ?)"
                        " ON CONFLICT (key) DO NOTHING"
                    ),
                    (key, request_hash, token, now, now, now + self.lease_s, now + self.retention_s),
                ).rowcount
                if inserted:
                    return Reservation(key=key, started=True, token=token)
                # Postgres: another transaction inserted the key since we looked; read what it wrote.
                record = self._locked_record(execute, key)
            if record.request_hash != request_hash:
                raise IdempotencyKeyReuseError(key, "it was first used with other arguments; use a new key")
            if record.status != "in_flight":
                return Reservation(key=key, started=False, record=record)
            if self._lease_live(record, now):
                raise IdempotencyConflictError(key, "a call with this key is still running; retry when it is done")
            if not recover_stale:
                raise IdempotencyOutcomeUnknownError(
                    key,
                    f"its worker died after starting it (attempt {record.attempts}) and the call must not run "
                    "twice; check the tool's own records before you run it again with a new key",
                )
            execute(
                self._sql(
                    "UPDATE idempotency_keys SET token = ?, attempts = attempts + 1, updated_at = ?,"
                    " lease_expires_at = ? WHERE key = ?"
                ),
                (token, now, now + self.lease_s, key),
            )
            return Reservation(key=key, started=True, recovered=True, token=token)

    def complete(self, reservation: Reservation, result: Any) -> None:
        self._settle(reservation, "completed", result)

    def fail(self, reservation: Reservation, error: Any) -> None:
        self._settle(reservation, "failed", error)

    def release(self, reservation: Reservation) -> None:
        with self._transaction() as execute:
            execute(
                self._sql("DELETE FROM idempotency_keys WHERE key = ? AND token = ? AND status = 'in_flight'"),
                (reservation.key, reservation.token),
            )

    def get(self, key: str) -> IdempotencyRecord | None:
        now = self.clock()
        with self._transaction() as execute:
            record = self._locked_record(execute, key)
        return None if record is None or self._expired(record, now) else record

    def purge_expired(self) -> int:
        now = self.clock()
        with self._transaction() as execute:
            return execute(
                self._sql(
                    "DELETE FROM idempotency_keys WHERE expires_at <= ?"
                    " AND NOT (status = 'in_flight' AND lease_expires_at > ?)"
                ),
                (now, now),
            ).rowcount

    def _settle(self, reservation: Reservation, status: KeyStatus, result: Any) -> None:
        if not reservation.started:
            raise ValueError("only a started reservation can be settled")
        now = self.clock()
        with self._transaction() as execute:
            updated = execute(
                self._sql(
                    "UPDATE idempotency_keys SET status = ?, result = ?, token = NULL, lease_expires_at = NULL,"
                    " updated_at = ?, expires_at = ? WHERE key = ? AND token = ? AND status = 'in_flight'"
                ),
                (status, canonical_json(result), now, now + self.retention_s, reservation.key, reservation.token),
            ).rowcount
        if not updated:
            raise IdempotencyConflictError(
                reservation.key, "its lease ran out and another worker took it over; raise lease_s above the call time"
            )

    @classmethod
    def _expired(cls, record: IdempotencyRecord, now: float) -> bool:
        return now >= record.expires_at and not cls._lease_live(record, now)

    @staticmethod
    def _lease_live(record: IdempotencyRecord, now: float) -> bool:
        return record.status == "in_flight" and record.lease_expires_at is not None and now < record.lease_expires_at

    def _locked_record(self, execute: Callable[[str, tuple], Any], key: str) -> IdempotencyRecord | None:
        row = execute(
            self._sql(f"SELECT {_COLUMNS} FROM idempotency_keys WHERE key = ?{self._lock_clause}"), (key,)
        ).fetchone()
        if row is None:
            return None
        values = dict(zip(_COLUMN_NAMES, row, strict=True))
        values.pop("token")
        values["result"] = None if values["result"] is None else json.loads(values["result"])
        return IdempotencyRecord.model_validate(values)


class SQLiteIdempotencyStore(SQLIdempotencyStore):
    """Keys in a SQLite file (or ``":memory:"``); safe across threads and processes.

    ``BEGIN IMMEDIATE`` takes the database's write lock before a key is read,
    so competing workers, in this process or another, queue up behind it.
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = str(path)
        self._conn = connect_sqlite(self.path, busy_timeout_s=30.0)
        self._conn.execute(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[Callable[[str, tuple], Any]]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn.execute
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresIdempotencyStore(SQLIdempotencyStore):
    """Keys in a PostgreSQL table (psycopg 3); many workers on many hosts can share it.

    ``SELECT ... FOR UPDATE`` locks an existing key's row and
    ``INSERT ... ON CONFLICT DO NOTHING`` settles a race to create one.

    Example (needs a server)::

        store = PostgresIdempotencyStore("postgresql://agent@db/agent", lease_s=60)
    """

    _placeholder = "%s"
    _lock_clause = " FOR UPDATE"

    def __init__(self, conninfo: str, **options: Any) -> None:
        import psycopg

        super().__init__(**options)
        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._conn.execute(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[Callable[[str, tuple], Any]]:
        with self._lock, self._conn.transaction():
            yield self._conn.execute

    def close(self) -> None:
        self._conn.close()
