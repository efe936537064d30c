"""A worker killed between a tool's write and its idempotency record does not hold the call for a lease.

Real parts: the worker is a real process that commits the tool's write and is
killed (``tests/consequence_worker.py``); the graph that takes over runs on the
real clock, long before the dead worker's 300 s lease would run out.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from consequence_shop import TABLE_OF, Shop, open_checkpointer, shop_graph
from consequence_worker import WORKER_THREAD, run_worker

from agentgraph.idempotency import DEFAULT_LEASE_S, SQLiteIdempotencyStore

CREDIT = ("add_credit", {"customer": "C1", "amount": 5.0, "reference": "credit-1"})
CHARGE = ("charge_card", {"customer": "C1", "amount": 9.0, "reference": "charge-1"})


@pytest.mark.parametrize(
    ("call", "outcome", "status", "reruns"),
    [(CREDIT, "recovered", "success", 1), (CHARGE, "outcome_unknown", "error", 0)],
    ids=["retry_safe", "retry_unsafe"],
)
def test_a_killed_workers_call_is_settled_at_once(tmp_path, call, outcome, status, reruns):
    name, arguments = call
    worker = run_worker(tmp_path, "crash", [name, arguments])
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    shop = Shop(tmp_path / "shop.db")
    store = SQLiteIdempotencyStore(tmp_path / "keys.db")  # the real clock: the dead worker's lease is still live
    [record] = [store.get(key) for key in _keys(tmp_path)]
    assert record.status == "in_flight" and record.lease_expires_at > store.clock() + DEFAULT_LEASE_S / 2

    with open_checkpointer(str(tmp_path / "checkpoints.db")) as saver:
        result = shop_graph(shop, store, checkpointer=saver).invoke(None, WORKER_THREAD)

    message, decision = result["messages"][-1], result["decisions"][-1]
    assert (decision.outcome, message.status) == (outcome, status)
    assert shop.count(TABLE_OF[name]) == 1, "no duplicate side effect"
    assert shop.runs[name] == reruns, "only the retry-safe call runs again, with its key"
    if status == "error":
        assert message.response_metadata["retry_blocked"] is True
        assert "died before recording what happened" in message.content and "Tell the customer" in message.content


def _keys(folder: Path) -> list[str]:
    with sqlite3.connect(folder / "keys.db") as keys:
        return [key for (key,) in keys.execute("SELECT key FROM idempotency_keys")]
