"""A durable idempotency store with Stripe's semantics, for tool calls that must not run twice.

A caller reserves a key before it runs a side effect and records the outcome
after. The same key with the same arguments then returns the recorded outcome
without running again; the same key with other arguments is an error
(:class:`~agentgraph.errors.IdempotencyKeyReuseError`); a duplicate while the
first is still running is a conflict
(:class:`~agentgraph.errors.IdempotencyConflictError`); keys are forgotten after
a retention window.

A reservation holds a lease, and names its owner: the process (host, pid and
start time) that holds the key. A worker that dies between running the side
effect and recording it leaves its key in flight; the key is *stale* once the
lease has run out, or at once when the owner is known to be dead: it ran on
this machine (same host, boot and pid namespace, which Linux's ``/proc``
tells) and its process is gone or its pid now belongs to a newer one. An owner
on another machine is presumed alive until its lease runs out. Whether a stale
key may run again depends on the caller, so :meth:`IdempotencyStore.begin` is
told: ``recover_stale=True`` hands the key to the new worker (right for tools
that use the key in their own write, so a second run is a no-op),
``recover_stale=False`` raises
:class:`~agentgraph.errors.IdempotencyOutcomeUnknownError` (a person must look).
Choose a lease longer than the slowest tool call: a lease that runs out while
the first worker is still busy lets a second one in.

Recorded outcomes are stored with their personal data masked
(:func:`agentgraph.pii.redact_pii_in`): a replay shows ``[CARD_NUMBER]`` where
the first run's answer had a card number. Keys and fingerprints are SHA-256
digests of the arguments, never the arguments themselves.

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
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from agentgraph.errors import (
    IdempotencyConflictError,
    IdempotencyKeyReuseError,
    IdempotencyOutcomeUnknownError,
)
from agentgraph.pii import redact_pii_in
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
    "owner_host",
    "owner_pid",
    "owner_started",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)
_OWNER_COLUMNS = {"owner_host": "TEXT", "owner_pid": "BIGINT", "owner_started": "BIGINT"}
"""Added after the first release: a table created before them gets them on open."""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS idempotency_keys ("
    " key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, status TEXT NOT NULL, token TEXT, result TEXT,"
    " attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " lease_expires_at DOUBLE PRECISION, expires_at DOUBLE PRECISION NOT NULL, "
    + ", ".join(f"{name} {kind}" for name, kind in _OWNER_COLUMNS.items())
    + ")"
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


class KeyOwner(BaseModel):
    """The process that holds a key in flight, named precisely enough for its own machine to tell it died."""

    host: str = Field(description="the hostname, with (on Linux) the boot and pid namespace the pid belongs to")
    pid: int
    started: int | None = Field(
        default=None, description="the process's start (Linux: clock ticks after boot), so a reused pid is not it"
    )

    @classmethod
    def this_process(cls) -> KeyOwner:
        pid = os.getpid()
        return cls(host=_host_identity(), pid=pid, started=_running_since(pid))

    def is_dead(self) -> bool:
        """True when this machine can tell the owner is gone; False when it is alive, or elsewhere, or unknowable."""
        if self.started is None or self.host != _host_identity():
            return False  # another machine or pid namespace (or no /proc): only the lease can tell
        return _running_since(self.pid) != self.started


@cache
def _host_identity() -> str:
    # A pid means one process only within one pid namespace of one boot of one machine.
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} boot={boot} pidns={namespace}"


def _running_since(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None when it is not running (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it start past the last ")".
    state, *fields = stat[stat.rindex(")") + 2 :].split()
    return None if state in ("Z", "X") else int(fields[18])  # a zombie has died; field 22 is the start time


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
    owner: KeyOwner | None = Field(default=None, description="while in flight: the process that holds the key")


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
        owner = KeyOwner.this_process()
        with self._transaction() as execute:
            record = self._locked_record(execute, key)
            if record is not None and self._expired(record, now):
                execute(self._sql("DELETE FROM idempotency_keys WHERE key = ?"), (key,))
                record = None
            if record is None:
                inserted = execute(
                    self._sql(
                        f"INSERT INTO idempotency_keys ({_COLUMNS})"
                        " VALUES (?, ?, 'in_flight', ?, NULL, 1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
                    ),
                    (key, request_hash, token, now, now, now + self.lease_s, now + self.retention_s,
                     owner.host, owner.pid, owner.started),
                ).rowcount  # fmt: skip
                if inserted:
                    return Reservation(key=key, started=True, token=token)
                # Postgres: another transaction inserted the key since we looked; read what it wrote.
                record = self._locked_record(execute, key)
                if record is None:  # ... and it was forgotten again before this transaction could lock it
                    raise IdempotencyConflictError(key, "another worker reserved and dropped this key meanwhile; retry")
            if record.request_hash != request_hash:
                raise IdempotencyKeyReuseError(key, "it was first used with other arguments; use a new key")
            if record.status != "in_flight":
                return Reservation(key=key, started=False, record=record)
            dead_owner = record.owner if record.owner is not None and record.owner.is_dead() else None
            if self._lease_live(record, now) and dead_owner is None:
                raise IdempotencyConflictError(key, "a call with this key is still running; retry when it is done")
            if not recover_stale:
                raise IdempotencyOutcomeUnknownError(key, _outcome_unknown(record, dead_owner))
            execute(
                self._sql(
                    "UPDATE idempotency_keys SET token = ?, attempts = attempts + 1, updated_at = ?,"
                    " lease_expires_at = ?, owner_host = ?, owner_pid = ?, owner_started = ? WHERE key = ?"
                ),
                (token, now, now + self.lease_s, owner.host, owner.pid, owner.started, key),
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
                    " owner_host = NULL, owner_pid = NULL, owner_started = NULL,"
                    " updated_at = ?, expires_at = ? WHERE key = ? AND token = ? AND status = 'in_flight'"
                ),
                (status, canonical_json(redact_pii_in(result)), now, now + self.retention_s, reservation.key,
                 reservation.token),
            ).rowcount  # fmt: skip
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
        host, pid, started = (values.pop(column) for column in _OWNER_COLUMNS)
        values["owner"] = None if host is None else KeyOwner(host=host, pid=pid, started=started)
        return IdempotencyRecord.model_validate(values)


def _outcome_unknown(record: IdempotencyRecord, dead_owner: KeyOwner | None) -> str:
    """Why a stale key's outcome is unknown (``dead_owner``: the worker known to have died, if any), and what the
    operator and the customer can do about it."""
    if dead_owner is not None:
        died = f"its worker (pid {dead_owner.pid} on {dead_owner.host.split()[0]}) died"
    else:
        died = "its worker's lease ran out (it died, or ran past lease_s)"
    return (
        f"the call started (attempt {record.attempts}) but {died} before recording what happened, so it may or may "
        "not have taken effect, and it must not run twice. Check the tool's own records; if it did not take effect, "
        "run it again under a new key (for keys derived from the thread: the same request in a new thread). Tell "
        "the customer that it is not yet known whether this went through, that it will not be repeated "
        "automatically, and that a person will confirm; they need not ask again, and can check their account meanwhile"
    )


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
        with self._transaction() as execute:
            present = {column[1] for column in execute("PRAGMA table_info(idempotency_keys)", ())}
            for name, kind in _OWNER_COLUMNS.items():
                if name not in present:
                    execute(f"ALTER TABLE idempotency_keys ADD COLUMN {name} {kind}", ())

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
        from agentgraph.postgres import connect, holding_setup_lock

        super().__init__(**options)
        self._conn = connect(conninfo)
        # Workers that start at once would race to create the table: one at a time, under the setup lock.
        with holding_setup_lock(self._conn):
            self._conn.execute(_SCHEMA)
            # Looked up first: ALTER TABLE locks the table even when it changes nothing.
            present = {
                name for (name,) in self._conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'idempotency_keys'"
                    " AND table_schema = current_schema()"
                )
            }  # fmt: skip
            for name, kind in _OWNER_COLUMNS.items():
                if name not in present:
                    self._conn.execute(f"ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS {name} {kind}")

    @contextmanager
    def _transaction(self) -> Iterator[Callable[[str, tuple], Any]]:
        with self._lock, self._conn.transaction():
            yield self._conn.execute

    def close(self) -> None:
        self._conn.close()


def open_idempotency_store(location: str | Path, **options: Any) -> SQLIdempotencyStore:
    """The idempotency store at ``location``: a ``postgresql://`` URL, else a SQLite file (``options`` go to the store).

    Example:
        >>> from agentgraph.idempotency import open_idempotency_store
        >>> type(open_idempotency_store(":memory:", lease_s=30)).__name__
        'SQLiteIdempotencyStore'
    """
    from agentgraph.postgres import is_postgres_url

    if is_postgres_url(location):
        return PostgresIdempotencyStore(str(location), **options)
    return SQLiteIdempotencyStore(location, **options)
