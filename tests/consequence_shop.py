"""A tiny shop whose tools have real side effects in their own SQLite database, with fault injection.

The tests count side effects here, in the tool's own tables, not in the
idempotency store: a duplicate shows up as a second row for one ``reference``.

- ``get_order``: read-only.
- ``add_credit``: retry-safe; takes the idempotency key and writes it to a
  UNIQUE column, so a second run with the same key is a no-op.
- ``charge_card``: retry-unsafe; every run inserts a charge.
- ``refund_order``: irreversible; a person approving it may edit its ``amount``, within the bounds its
  schema declares (0 to 10,000), and nothing else.

A fault queued with :meth:`Shop.inject` hits the tool's next run:
``fail_before`` raises before writing, ``fail_after_commit`` commits and then
raises, ``crash_after_commit`` commits and then raises :class:`SimulatedCrash`
(a BaseException nothing catches, standing in for a dead process),
``exit_after_commit`` commits and kills the process, ``slow`` sleeps before
writing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import BaseTool, InjectedToolArg, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import RetryPolicy
from pydantic import Field

from agentgraph.checkpointing import postgres_checkpointer, sqlite_checkpointer
from agentgraph.errors import IdempotencyConflictError
from agentgraph.idempotency import IdempotencyStore
from agentgraph.nodes.consequence import ConsequencePolicy, create_guarded_tool_node
from agentgraph.postgres import is_postgres_url
from agentgraph.records.decisions import DecisionLog, DecisionState
from agentgraph.write_safety import WriteConsent

POLICY = ConsequencePolicy(
    tools={
        "get_order": "safe",
        "add_credit": "retry_safe",
        "charge_card": "retry_unsafe",
        "refund_order": "irreversible",
    },
    editable={"refund_order": {"amount"}},
)
TABLE_OF = {"add_credit": "credits", "charge_card": "charges", "refund_order": "refunds"}
FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)

Contender = TypeVar("Contender")


class SimulatedCrash(BaseException):
    """The process 'died' here: raised past every ``except Exception``."""


class ShopState(DecisionState):
    messages: Annotated[list[AnyMessage], add_messages]
    request: str
    write_consent: WriteConsent | None


class Shop:
    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # survives a killed process, which is all tests kill
        self._conn.executescript(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS credits (id INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,"
            " reference TEXT NOT NULL, customer TEXT NOT NULL, amount REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, reference TEXT NOT NULL,"
            " customer TEXT NOT NULL, amount REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS refunds (id INTEGER PRIMARY KEY, reference TEXT NOT NULL,"
            " order_id TEXT NOT NULL, amount REAL NOT NULL);"
            "INSERT OR IGNORE INTO orders VALUES ('A1', 'shipped'), ('B2', 'processing');"
        )
        self._lock = threading.Lock()
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self.runs: dict[str, int] = defaultdict(int)

    def inject(self, tool_name: str, *faults: str) -> None:
        self._faults[tool_name].extend(faults)

    def clear_faults(self) -> None:
        """Drop the faults no run reached (a call that was rejected, replayed or failed for good)."""
        self._faults.clear()

    def count(self, table: str, reference: str | None = None) -> int:
        query = f"SELECT COUNT(*) FROM {table}" + (" WHERE reference = ?" if reference is not None else "")
        return self._conn.execute(query, (reference,) if reference is not None else ()).fetchone()[0]

    def amounts(self, table: str, reference: str) -> list[float]:
        rows = self._conn.execute(f"SELECT amount FROM {table} WHERE reference = ?", (reference,))
        return [amount for (amount,) in rows]

    def _write(self, tool_name: str, query: str, params: tuple) -> int:
        """Run one write as ``tool_name`` with its next fault; returns the row id."""
        with self._lock:
            self.runs[tool_name] += 1
            fault = self._faults[tool_name].popleft() if self._faults[tool_name] else None
        if fault == "slow":
            time.sleep(0.3)
        if fault == "fail_before":
            raise ConnectionError(f"{tool_name}: the payment service is unreachable")
        row_id = self._conn.execute(query, params).lastrowid
        if fault == "fail_after_commit":
            raise ConnectionError(f"{tool_name}: the connection dropped after the write")
        if fault == "crash_after_commit":
            raise SimulatedCrash(tool_name)
        if fault == "exit_after_commit":
            os.kill(os.getpid(), signal.SIGKILL)
        return row_id

    def tools(self) -> list[BaseTool]:
        shop = self

        @tool
        def get_order(order_id: str) -> str:
            """Look up the status of an order."""
            row = shop._conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            return f"order {order_id}: {row[0] if row else 'not found'}"

        @tool
        def add_credit(
            customer: str, amount: float, reference: str, idempotency_key: Annotated[str, InjectedToolArg]
        ) -> str:
            """Add store credit to a customer's account."""
            shop._write(
                "add_credit",
                "INSERT INTO credits (idempotency_key, reference, customer, amount) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (idempotency_key, reference, customer, amount),
            )
            return f"credited {amount} to {customer}"

        @tool
        def charge_card(customer: str, amount: float, reference: str) -> str:
            """Charge a customer's card."""
            row_id = shop._write(
                "charge_card",
                "INSERT INTO charges (reference, customer, amount) VALUES (?, ?, ?)",
                (reference, customer, amount),
            )
            return f"charge {row_id}: {amount} from {customer}"

        @tool
        def refund_order(order_id: str, amount: Annotated[float, Field(ge=0, le=10_000)], reference: str) -> str:
            """Refund money for an order to the customer's card."""
            shop._write(
                "refund_order",
                "INSERT INTO refunds (reference, order_id, amount) VALUES (?, ?, ?)",
                (reference, order_id, amount),
            )
            return f"refunded {amount} for {order_id}"

        get_order.metadata = {"readOnlyHint": True, "openWorldHint": False}
        return [get_order, add_credit, charge_card, refund_order]

    def close(self) -> None:
        self._conn.close()


def shop_graph(
    shop: Shop,
    store: IdempotencyStore,
    *,
    checkpointer=None,
    retry_policy: RetryPolicy | None = FAST_RETRY,
    decision_log: DecisionLog | None = None,
    policy: ConsequencePolicy = POLICY,
    **options,
):
    """One guarded tool node over the shop's tools, with the shop's policy (``options`` go to the node)."""
    node = create_guarded_tool_node(
        shop.tools(), policy=policy, idempotency_store=store, decision_log=decision_log, **options
    )
    builder = StateGraph(ShopState)
    builder.add_node("tools", node, retry_policy=retry_policy)
    builder.add_edge(START, "tools")
    return builder.compile(checkpointer=checkpointer)


# Checkpoints in PostgreSQL take their key from the caller (or AGENTGRAPH_CHECKPOINT_KEY): the processes of one
# test share this one, as the workers of one deployment share theirs.
POSTGRES_CHECKPOINT_KEY = bytes(range(32))


@contextmanager
def open_checkpointer(at: str) -> Iterator[BaseCheckpointSaver]:
    """Durable, encrypted checkpoints at ``at``: a PostgreSQL URL, else a SQLite file."""
    saver = postgres_checkpointer(at, key=POSTGRES_CHECKPOINT_KEY) if is_postgres_url(at) else sqlite_checkpointer(at)
    try:
        yield saver
    finally:
        saver.conn.close()


def tool_calls(*calls: tuple[str, dict], **state) -> dict:
    """Graph input: one AI message calling ``(tool name, arguments)`` in order, and any other ``state``."""
    message = AIMessage(
        "", tool_calls=[{"name": n, "args": a, "id": f"call-{i}-{n}"} for i, (n, a) in enumerate(calls)]
    )
    return {"messages": [message], **state}


class Clock:
    """A clock the tests move forward, to expire leases and retention windows without sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def race(attempt: Callable[[Contender], str], contenders: Sequence[Contender]) -> list[str]:
    """Start ``attempt(contender)`` for every contender at once, each in its own thread.

    Returns the outcomes in finishing order; a conflict (a duplicate in flight) is ``"conflict"``.
    """
    barrier = threading.Barrier(len(contenders))
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(contender: Contender) -> None:
        barrier.wait()
        try:
            outcome = attempt(contender)
        except IdempotencyConflictError:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(c,)) for c in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
