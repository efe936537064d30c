"""The fictional store behind the example graph: a SQLite database of customers, orders, invoices and refunds.

:class:`Shop` creates the database with fixed-seed data on first use (orders
10001 and 48213 belong to the demo customer ``C1001``, among 600 orders of 80
customers) and :meth:`Shop.tools` gives the tools the graph calls, each a
langchain tool carrying MCP-style annotations:

- reads (``readOnlyHint``): :func:`get_order_status`, :func:`get_invoice`,
  :func:`get_refund_status`, :func:`list_orders`;
- retry-safe writes (``idempotentHint``): ``cancel_order``,
  ``request_order_change``, ``request_address_change``. Each takes the
  injected ``idempotency_key`` and stores it under a UNIQUE constraint, so a
  second run with the same key changes nothing;
- irreversible writes (``destructiveHint``): ``issue_refund`` and
  ``delete_account``, which the graph runs only after a person approves.
  :meth:`Shop.explicit_arguments` gives the consequence modeler the reads that
  make a call's figures explicit before a person sees it: a refund without an
  amount is a refund of everything not yet refunded, shown as that amount.

Amounts must be positive, finite numbers; the store refuses anything else with
a :class:`ShopError`, as it refuses more than is left to refund.

Every write is also appended to the ``writes`` table, the store's own count of
side effects (tests count duplicates there).

Example:
    >>> import tempfile, pathlib
    >>> shop = Shop(pathlib.Path(tempfile.mkdtemp()) / "shop.db")
    >>> tools = {t.name: t for t in shop.tools()}
    >>> tools["get_order_status"].invoke({"customer_id": "C1001", "order_id": "10001"})["status"]
    'shipped'
    >>> tools["cancel_order"].invoke({"customer_id": "C1001", "order_id": "48213", "idempotency_key": "k1"})["status"]
    'cancelled'
    >>> tools["cancel_order"].invoke({"customer_id": "C1001", "order_id": "48213", "idempotency_key": "k1"})["changed"]
    False
    >>> shop.count_writes("cancel_order")
    1
    >>> shop.explicit_refund("C1001", "10001", None)["amount"] == shop.order_status("C1001", "10001")["total"]
    True
"""

from __future__ import annotations

import math
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, ToolException

from agentgraph.storage import connect_sqlite

DEMO_CUSTOMER = "C1001"
"""The customer the CLI acts for unless told otherwise; orders 10001 and 48213 are theirs."""

IdempotencyKey = Annotated[str, InjectedToolArg]
"""The key the consequence modeler injects into a retry-safe write (hidden from the model)."""

SEED = 20261124
TODAY = date(2026, 11, 24)
"""The store's fixed 'today': seed dates, delivery estimates and refund windows are relative to it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, plan TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id), placed_on TEXT NOT NULL,
    status TEXT NOT NULL, total REAL NOT NULL, items TEXT NOT NULL, carrier TEXT NOT NULL,
    estimated_delivery TEXT NOT NULL, shipping_city TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invoices (
    id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders(id), issued_on TEXT NOT NULL,
    amount REAL NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL REFERENCES orders(id), amount REAL NOT NULL,
    status TEXT NOT NULL, requested_on TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS change_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL REFERENCES orders(id), kind TEXT NOT NULL,
    status TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tool TEXT NOT NULL, target TEXT NOT NULL, idempotency_key TEXT UNIQUE);
"""

_ITEMS = ["wireless headphones", "running shoes", "coffee grinder", "desk lamp", "yoga mat", "backpack",
          "phone case", "water bottle", "bluetooth speaker", "wool scarf", "board game", "kettle"]  # fmt: skip
_CITIES = ["Lisbon", "Porto", "Madrid", "Lyon", "Berlin", "Dublin", "Milan", "Ghent"]
_CARRIERS = ["DHL", "UPS", "CTT Express", "GLS"]
_PLANS = ["Standard", "Premium", "Platinum"]
_STATUSES = ["processing", "shipped", "delivered", "delivered", "delivered"]
_CANCELLABLE = {"processing"}


class ShopError(ToolException):
    """A request the store refuses (an unknown order, an order of another customer, a state that forbids it).

    A ``ToolException``: the tool returns it to the graph as an error message; any other exception is a fault.
    """


class Shop:
    """The store's database at ``path``: created and seeded on first use, safe across threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect_sqlite(self.path)
        self._conn.row_factory = sqlite3.Row
        self._conn.executescript(_SCHEMA)
        with self._transaction() as db:
            if db.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 0:
                _seed(db)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _order(self, db: sqlite3.Connection, customer_id: str, order_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id.lstrip("0"),)).fetchone()
        if row is None or row["customer_id"] != customer_id:
            raise ShopError(f"there is no order {order_id} on your account")
        return row

    def count_writes(self, tool: str | None = None) -> int:
        """Side effects recorded by the store itself (every write tool appends one row per real change)."""
        query, args = ("SELECT COUNT(*) FROM writes", ()) if tool is None else (
            "SELECT COUNT(*) FROM writes WHERE tool = ?", (tool,))  # fmt: skip
        with self._lock:
            return self._conn.execute(query, args).fetchone()[0]

    # Reads.

    def list_orders(self, customer_id: str, limit: int = 5) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, placed_on, status, total FROM orders WHERE customer_id = ? ORDER BY placed_on DESC LIMIT ?",
                (customer_id, limit),
            ).fetchall()
        return [dict(row) for row in rows]

    def order_status(self, customer_id: str, order_id: str | None) -> dict[str, Any]:
        with self._lock:
            if order_id is None:
                order_id = self._latest_order_id(customer_id)
            return dict(self._order(self._conn, customer_id, order_id))

    def invoice(self, customer_id: str, invoice_id: str | None, order_id: str | None) -> dict[str, Any]:
        with self._lock:
            if invoice_id is not None:
                row = self._conn.execute(
                    "SELECT invoices.* FROM invoices JOIN orders ON orders.id = invoices.order_id "
                    "WHERE invoices.id = ? AND orders.customer_id = ?",
                    (invoice_id.lstrip("#").lstrip("0"), customer_id),
                ).fetchone()
                if row is None:
                    raise ShopError(f"there is no invoice {invoice_id} on your account")
                return dict(row)
            order = self._order(self._conn, customer_id, order_id or self._latest_order_id(customer_id))
            return dict(self._conn.execute("SELECT * FROM invoices WHERE order_id = ?", (order["id"],)).fetchone())

    def refund_status(self, customer_id: str, order_id: str | None) -> dict[str, Any]:
        with self._lock:
            if order_id is None:
                row = self._conn.execute(
                    "SELECT refunds.* FROM refunds JOIN orders ON orders.id = refunds.order_id "
                    "WHERE orders.customer_id = ? ORDER BY refunds.id DESC LIMIT 1",
                    (customer_id,),
                ).fetchone()
                if row is None:
                    raise ShopError("there is no refund on your account")
                return dict(row)
            order = self._order(self._conn, customer_id, order_id)
            row = self._conn.execute(
                "SELECT * FROM refunds WHERE order_id = ? ORDER BY id DESC LIMIT 1", (order["id"],)
            ).fetchone()
            if row is None:
                raise ShopError(f"there is no refund for order {order['id']}")
            return dict(row)

    def _latest_order_id(self, customer_id: str) -> str:
        row = self._conn.execute(
            "SELECT id FROM orders WHERE customer_id = ? ORDER BY placed_on DESC LIMIT 1", (customer_id,)
        ).fetchone()
        if row is None:
            raise ShopError("there are no orders on your account")
        return row["id"]

    # Writes: each changes the database at most once per idempotency key.

    def _already_done(self, db: sqlite3.Connection, key: str | None) -> bool:
        return (
            key is not None
            and db.execute("SELECT 1 FROM writes WHERE idempotency_key = ?", (key,)).fetchone() is not None
        )

    def _record_write(self, db: sqlite3.Connection, tool: str, target: str, key: str | None) -> None:
        db.execute("INSERT INTO writes (tool, target, idempotency_key) VALUES (?, ?, ?)", (tool, target, key))

    def cancel_order(self, customer_id: str, order_id: str, idempotency_key: str) -> dict[str, Any]:
        with self._transaction() as db:
            order = self._order(db, customer_id, order_id)
            if self._already_done(db, idempotency_key):
                return {"order_id": order["id"], "status": order["status"], "changed": False}
            if order["status"] not in _CANCELLABLE:
                raise ShopError(f"order {order['id']} is already {order['status']} and can no longer be cancelled")
            db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order["id"],))
            self._record_write(db, "cancel_order", order["id"], idempotency_key)
            return {"order_id": order["id"], "status": "cancelled", "changed": True}

    def request_change(self, customer_id: str, order_id: str, kind: str, idempotency_key: str) -> dict[str, Any]:
        with self._transaction() as db:
            order = self._order(db, customer_id, order_id)
            changed = not self._already_done(db, idempotency_key)
            if changed:
                if order["status"] != "processing":
                    raise ShopError(f"order {order['id']} is already {order['status']}; it can no longer be changed")
                db.execute(
                    "INSERT INTO change_requests (order_id, kind, status, idempotency_key) VALUES (?, ?, 'open', ?)",
                    (order["id"], kind, idempotency_key),
                )
                self._record_write(db, f"request_{kind}_change", order["id"], idempotency_key)
            return {"order_id": order["id"], "kind": kind, "status": "open", "changed": changed}

    def _refund_amount(self, db: sqlite3.Connection, order: sqlite3.Row, amount: float | None) -> float:
        """What a refund of ``amount`` (None: everything not yet refunded) of ``order`` pays out, checked."""
        if amount is not None and not (math.isfinite(amount) and amount > 0):
            raise ShopError(f"a refund amount must be a positive number of EUR, not {amount}")
        refunded = db.execute("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE order_id = ?", (order["id"],))
        left = order["total"] - refunded.fetchone()[0]
        resolved = round(left if amount is None else amount, 2)
        if resolved <= 0 or resolved > left + 1e-9:
            raise ShopError(f"order {order['id']} has {left:.2f} left to refund")
        return resolved

    def explicit_refund(self, customer_id: str, order_id: str, amount: float | None) -> dict[str, Any]:
        """The refund :meth:`issue_refund` would make, its order and amount explicit; changes nothing."""
        with self._lock:
            order = self._order(self._conn, customer_id, order_id)
            amount = self._refund_amount(self._conn, order, amount)
        return {"customer_id": customer_id, "order_id": order["id"], "amount": amount}

    def issue_refund(self, customer_id: str, order_id: str, amount: float | None) -> dict[str, Any]:
        with self._transaction() as db:
            order = self._order(db, customer_id, order_id)
            amount = self._refund_amount(db, order, amount)
            cursor = db.execute(
                "INSERT INTO refunds (order_id, amount, status, requested_on) VALUES (?, ?, 'approved', ?)",
                (order["id"], amount, TODAY.isoformat()),
            )
            self._record_write(db, "issue_refund", order["id"], None)
            return {"refund_id": cursor.lastrowid, "order_id": order["id"], "amount": amount, "status": "approved"}

    def delete_account(self, customer_id: str) -> dict[str, Any]:
        with self._transaction() as db:
            row = db.execute("SELECT status FROM customers WHERE id = ?", (customer_id,)).fetchone()
            if row is None or row["status"] == "deleted":
                raise ShopError("there is no active account to delete")
            db.execute("UPDATE customers SET status = 'deleted' WHERE id = ?", (customer_id,))
            self._record_write(db, "delete_account", customer_id, None)
            return {"customer_id": customer_id, "status": "deleted"}

    def explicit_arguments(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """Per write tool, the read that makes its call's figures explicit (``resolve_arguments`` of
        :func:`~agentgraph.nodes.consequence.create_guarded_tool_node`); a call the store would refuse raises
        :class:`ShopError`."""
        return {"issue_refund": lambda arguments: self.explicit_refund(**arguments)}

    def tools(self) -> list[BaseTool]:
        """The store's operations as langchain tools, with MCP-style annotations in their metadata."""
        read = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}
        retry_safe = {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}
        irreversible = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": False}

        def get_order_status(customer_id: str, order_id: str | None = None) -> dict[str, Any]:
            """Status, items, carrier and estimated delivery of an order (default: the customer's latest)."""
            return self.order_status(customer_id, order_id)

        def list_orders(customer_id: str) -> list[dict[str, Any]]:
            """The customer's five most recent orders."""
            return self.list_orders(customer_id)

        def get_invoice(customer_id: str, invoice_id: str | None = None, order_id: str | None = None) -> dict[str, Any]:
            """An invoice by its number, or the invoice of an order (default: the customer's latest order)."""
            return self.invoice(customer_id, invoice_id, order_id)

        def get_refund_status(customer_id: str, order_id: str | None = None) -> dict[str, Any]:
            """The latest refund of an order (default: the customer's latest refund)."""
            return self.refund_status(customer_id, order_id)

        def cancel_order(customer_id: str, order_id: str, idempotency_key: IdempotencyKey) -> dict[str, Any]:
            """Cancel an order that has not shipped yet."""
            return self.cancel_order(customer_id, order_id, idempotency_key)

        def request_order_change(customer_id: str, order_id: str, idempotency_key: IdempotencyKey) -> dict[str, Any]:
            """Hold an unshipped order and open a change request; the customer gets a link to edit its items."""
            return self.request_change(customer_id, order_id, "order", idempotency_key)

        def request_address_change(customer_id: str, order_id: str, idempotency_key: IdempotencyKey) -> dict[str, Any]:
            """Hold an unshipped order and open an address change; the customer gets a link to enter the new address."""
            return self.request_change(customer_id, order_id, "address", idempotency_key)

        def issue_refund(customer_id: str, order_id: str, amount: float | None = None) -> dict[str, Any]:
            """Refund money for an order to the original payment method (default: everything not yet refunded)."""
            return self.issue_refund(customer_id, order_id, amount)

        def delete_account(customer_id: str) -> dict[str, Any]:
            """Delete the customer's account and personal data. It cannot be undone."""
            return self.delete_account(customer_id)

        hints: dict[Callable[..., Any], dict[str, bool]] = {get_order_status: read, list_orders: read, get_invoice: read, get_refund_status: read,
                 cancel_order: retry_safe, request_order_change: retry_safe, request_address_change: retry_safe,
                 issue_refund: irreversible, delete_account: irreversible}  # fmt: skip
        return [
            StructuredTool.from_function(
                function, metadata=annotations, response_format="content", handle_tool_error=_shop_error_text
            )
            for function, annotations in hints.items()
        ]


def _shop_error_text(error: ToolException) -> str:
    return f"Error: {error}"


def _seed(db: sqlite3.Connection) -> None:
    """Fixed-seed customers, orders, invoices and refunds; orders 10001 and 48213 are the demo customer's."""
    rng = random.Random(SEED)
    customers = [DEMO_CUSTOMER, *(f"C{1002 + i}" for i in range(79))]
    for number, customer in enumerate(customers):
        name = "Alex Morgan" if customer == DEMO_CUSTOMER else f"Customer {number}"
        db.execute(
            "INSERT INTO customers VALUES (?, ?, ?, ?, 'active')",
            (customer, name, f"{customer.lower()}@example.com", rng.choice(_PLANS)),
        )
    fixed = {"10001": (DEMO_CUSTOMER, "shipped", 12), "48213": (DEMO_CUSTOMER, "processing", 2)}
    order_ids = list(fixed) + [str(n) for n in rng.sample(range(10002, 99999), 598) if str(n) not in fixed]
    for order_id in order_ids:
        customer, status, age = fixed.get(order_id) or (
            rng.choice(customers),
            rng.choice(_STATUSES),
            rng.randint(1, 90),
        )
        placed = TODAY - timedelta(days=age)
        items = ", ".join(rng.sample(_ITEMS, rng.randint(1, 3)))
        total = round(rng.uniform(9, 400), 2)
        db.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order_id, customer, placed.isoformat(), status, total, items, rng.choice(_CARRIERS),
             (placed + timedelta(days=rng.randint(3, 7))).isoformat(), rng.choice(_CITIES)),
        )  # fmt: skip
        db.execute(
            "INSERT INTO invoices VALUES (?, ?, ?, ?, ?)",
            (str(int(order_id) + 60000), order_id, placed.isoformat(), total, "paid"),
        )
        if status == "delivered" and rng.random() < 0.15:
            db.execute(
                "INSERT INTO refunds (order_id, amount, status, requested_on) VALUES (?, ?, ?, ?)",
                (order_id, round(total * rng.choice([0.5, 1.0]), 2), rng.choice(["pending", "approved", "paid"]),
                 (placed + timedelta(days=rng.randint(5, 20))).isoformat()),
            )  # fmt: skip
