"""The idempotency store's contract, run against SQLite and a throwaway PostgreSQL server."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from consequence_shop import Clock, race

from agentgraph.errors import IdempotencyConflictError, IdempotencyKeyReuseError, IdempotencyOutcomeUnknownError
from agentgraph.idempotency import (
    KeyOwner,
    PostgresIdempotencyStore,
    SQLIdempotencyStore,
    SQLiteIdempotencyStore,
    derive_idempotency_key,
    request_fingerprint,
)

LEASE_S = 60.0
RETENTION_S = 3600.0
REFUND = request_fingerprint("refund", {"order_id": "A1", "amount": 5})
OTHER_REFUND = request_fingerprint("refund", {"order_id": "A1", "amount": 50})


@pytest.fixture
def clock() -> Clock:
    return Clock()


# The table as the first release created it, before keys named their owner.
FIRST_RELEASE_SCHEMA = (
    "CREATE TABLE idempotency_keys ("
    " key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, status TEXT NOT NULL, token TEXT, result TEXT,"
    " attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " lease_expires_at DOUBLE PRECISION, expires_at DOUBLE PRECISION NOT NULL)"
)

# Reserves a key, then dies the way a killed worker does: nothing after the reservation runs.
DYING_WORKER = """
import os, signal, sys
from agentgraph import idempotency
store = getattr(idempotency, sys.argv[1])(sys.argv[2])
store.begin(sys.argv[3], sys.argv[4])
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request, tmp_path) -> tuple[type[SQLIdempotencyStore], str]:
    """One fresh, empty backend: the store class and what it connects to."""
    if request.param == "sqlite":
        return SQLiteIdempotencyStore, str(tmp_path / "keys.db")
    return PostgresIdempotencyStore, request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store(backend, clock) -> Iterator[Callable[[], SQLIdempotencyStore]]:
    """Opens stores on the backend: each call is a new connection, as another worker would have."""
    store_class, target = backend

    def connect() -> SQLIdempotencyStore:
        return store_class(target, lease_s=LEASE_S, retention_s=RETENTION_S, clock=clock)

    opened: list[SQLIdempotencyStore] = []

    def open_one() -> SQLIdempotencyStore:
        opened.append(connect())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> SQLIdempotencyStore:
    return open_store()


def test_same_key_and_arguments_return_the_recorded_result_without_running_again(store):
    first = store.begin("k1", REFUND)
    assert first.started and not first.recovered
    store.complete(first, {"refund_id": 7, "note": "ünïcode"})

    again = store.begin("k1", REFUND)

    assert not again.started
    assert again.record.status == "completed"
    assert again.record.result == {"refund_id": 7, "note": "ünïcode"}
    assert again.record.attempts == 1


def test_same_key_with_other_arguments_is_an_error_in_flight_and_after(store):
    first = store.begin("k1", REFUND)
    with pytest.raises(IdempotencyKeyReuseError, match="other arguments"):
        store.begin("k1", OTHER_REFUND)
    store.complete(first, "done")
    with pytest.raises(IdempotencyKeyReuseError):
        store.begin("k1", OTHER_REFUND)


def test_a_duplicate_while_the_first_is_in_flight_is_a_conflict(store):
    store.begin("k1", REFUND)
    with pytest.raises(IdempotencyConflictError, match="still running"):
        store.begin("k1", REFUND)


def test_keys_expire_after_the_retention_window(store, clock):
    store.complete(store.begin("k1", REFUND), "first")
    clock.advance(RETENTION_S - 1)
    assert not store.begin("k1", REFUND).started

    clock.advance(2)

    assert store.get("k1") is None
    assert store.begin("k1", OTHER_REFUND).started, "an expired key is free again, for any arguments"


def test_purging_deletes_only_expired_keys(store, clock):
    store.complete(store.begin("old", REFUND), "old")
    clock.advance(RETENTION_S / 2)
    store.complete(store.begin("recent", REFUND), "recent")
    clock.advance(RETENTION_S / 2 + 1)

    assert store.purge_expired() == 1
    assert store.get("old") is None
    assert store.get("recent").result == "recent"


def test_a_stale_key_is_taken_over_only_when_the_caller_allows(store, clock):
    store.begin("k1", REFUND)  # this worker "dies" without recording
    clock.advance(LEASE_S + 1)

    with pytest.raises(IdempotencyOutcomeUnknownError, match="died"):
        store.begin("k1", REFUND, recover_stale=False)
    taken = store.begin("k1", REFUND, recover_stale=True)

    assert taken.started and taken.recovered
    assert store.get("k1").attempts == 2
    with pytest.raises(IdempotencyConflictError):
        store.begin("k1", REFUND)


def test_a_late_completion_after_a_takeover_is_refused(store, clock):
    slow = store.begin("k1", REFUND)
    clock.advance(LEASE_S + 1)
    fast = store.begin("k1", REFUND)
    store.complete(fast, "fast")

    with pytest.raises(IdempotencyConflictError, match="lease ran out"):
        store.complete(slow, "slow")
    assert store.get("k1").result == "fast"


def test_a_recorded_failure_is_replayed_not_run_again(store):
    store.fail(store.begin("k1", REFUND), "ConnectionError: card network down")

    again = store.begin("k1", REFUND)

    assert not again.started
    assert (again.record.status, again.record.result) == ("failed", "ConnectionError: card network down")


def test_a_released_key_may_run_again(store):
    store.release(store.begin("k1", REFUND))
    assert store.get("k1") is None
    assert store.begin("k1", OTHER_REFUND).started


def test_only_a_started_reservation_can_be_settled(store):
    store.complete(store.begin("k1", REFUND), "done")
    with pytest.raises(ValueError, match="started"):
        store.complete(store.begin("k1", REFUND), "again")


def test_records_survive_closing_and_reopening(open_store):
    first = open_store()
    first.complete(first.begin("k1", REFUND), {"refund_id": 9})
    first.begin("k2", REFUND)
    first.close()

    reopened = open_store()

    assert reopened.begin("k1", REFUND).record.result == {"refund_id": 9}
    assert reopened.get("k2").status == "in_flight"


def test_concurrent_duplicates_from_many_connections_start_exactly_once(open_store):
    stores = [open_store() for _ in range(12)]

    outcomes = race(lambda store: "started" if store.begin("hot", REFUND).started else "replayed", stores)

    assert sorted(outcomes) == ["conflict"] * (len(stores) - 1) + ["started"]


def test_lease_must_fit_in_the_retention_window(tmp_path):
    with pytest.raises(ValueError, match="lease_s"):
        SQLiteIdempotencyStore(tmp_path / "keys.db", lease_s=10, retention_s=5)


def test_derived_keys_depend_on_thread_tool_and_arguments_not_on_argument_order():
    key = derive_idempotency_key("t1", "refund", {"order_id": "A1", "amount": 5})

    assert key == derive_idempotency_key("t1", "refund", {"amount": 5, "order_id": "A1"})
    assert (
        len(
            {
                key,
                derive_idempotency_key("t2", "refund", {"order_id": "A1", "amount": 5}),
                derive_idempotency_key("t1", "charge", {"order_id": "A1", "amount": 5}),
                derive_idempotency_key("t1", "refund", {"order_id": "A1", "amount": 6}),
            }
        )
        == 4
    )
    assert request_fingerprint("refund", {"a": 1, "b": 2}) == request_fingerprint("refund", {"b": 2, "a": 1})


# --- the owner of a key in flight ----------------------------------------------------------------------------


def reserve_and_die(backend: tuple[type[SQLIdempotencyStore], str], key: str, request_hash: str) -> None:
    """A worker process, on the real clock and the default lease, that reserves ``key`` and is killed."""
    store_class, target = backend
    worker = subprocess.run([sys.executable, "-c", DYING_WORKER, store_class.__name__, target, key, request_hash],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert worker.returncode == -signal.SIGKILL, worker.stderr


def test_a_reservation_names_the_process_that_holds_it(store):
    store.begin("k1", REFUND)

    assert store.get("k1").owner == KeyOwner.this_process()
    assert not store.get("k1").owner.is_dead()
    with pytest.raises(IdempotencyConflictError, match="still running"):
        store.begin("k1", REFUND)


def test_a_dead_owners_retry_safe_key_runs_again_at_once_not_after_its_lease(backend, open_store):
    reserve_and_die(backend, "k1", REFUND)
    store = open_store()  # its clock stands long before the dead worker's lease runs out
    assert store.get("k1").owner.is_dead()

    taken = store.begin("k1", REFUND, recover_stale=True)

    assert taken.started and taken.recovered
    assert store.get("k1").attempts == 2 and store.get("k1").owner == KeyOwner.this_process()


def test_a_dead_owners_other_key_is_outcome_unknown_at_once_and_says_what_to_do(backend, open_store):
    reserve_and_die(backend, "k1", REFUND)
    store = open_store()
    dead = store.get("k1").owner

    with pytest.raises(IdempotencyOutcomeUnknownError) as unknown:
        store.begin("k1", REFUND, recover_stale=False)

    message = str(unknown.value)
    assert f"its worker (pid {dead.pid} on {socket.gethostname()}) died before recording what happened" in message
    assert "run it again under a new key" in message
    assert "Tell the customer that it is not yet known whether this went through" in message
    assert store.get("k1").status == "in_flight", "nothing was settled: a person must look"


def test_settling_forgets_the_owner(store):
    store.complete(store.begin("k1", REFUND), "done")
    assert store.get("k1").owner is None


def test_an_owner_is_dead_when_its_pid_is_gone_or_taken_by_a_newer_process():
    me = KeyOwner.this_process()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    assert not me.is_dead()
    assert me.model_copy(update={"started": me.started + 1}).is_dead(), "a reused pid is another process"
    assert me.model_copy(update={"pid": child.pid}).is_dead()


def test_an_owner_on_another_machine_is_left_to_its_lease():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    elsewhere = KeyOwner(host="another-host", pid=child.pid, started=1)

    assert not elsewhere.is_dead()


def test_a_table_from_the_first_release_gets_the_owner_columns(backend, open_store):
    store_class, target = backend
    if store_class is SQLiteIdempotencyStore:
        with sqlite3.connect(target) as old:
            old.execute(FIRST_RELEASE_SCHEMA)
    else:
        import psycopg

        with psycopg.connect(target, autocommit=True) as old:
            old.execute(FIRST_RELEASE_SCHEMA)

    store = open_store()
    store.complete(store.begin("k1", REFUND), "done")

    assert store.get("k1").result == "done"
    assert open_store().begin("k2", REFUND).started


def test_a_recorded_outcome_keeps_no_personal_data(store):
    store.complete(store.begin("k1", REFUND), {"content": "Error: there is no order 4111111111111111 on your account"})

    assert store.get("k1").result == {"content": "Error: there is no order [CARD_NUMBER] on your account"}
