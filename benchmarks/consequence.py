"""Consequence modeler benchmark: the cost of guarding a tool call, and the SLM on undeclared tools.

    python benchmarks/consequence.py                          # both parts, SQLite store
    python benchmarks/consequence.py --no-slm                 # overhead only
    python benchmarks/consequence.py --postgres postgresql://agent@127.0.0.1:5432/postgres

Overhead: one graph turn with one call through LangGraph's ``ToolNode`` against the
guarded node (classes from the policy table, so no model runs), for a safe and a
retry-unsafe call, and the store's own ``begin`` + ``complete``. SLM: a small hand-labelled
set of tool calls classified by the embedded SLM (calibrated probabilities); for each
threshold, the share it decides alone and its accuracy there (the rest go to the LLM). Figures are
printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from agentgraph.idempotency import PostgresIdempotencyStore, SQLiteIdempotencyStore, request_fingerprint
from agentgraph.nodes.consequence import (
    ConsequencePolicy,
    classify_tool_call,
    content_free_prior,
    create_guarded_tool_node,
)

LABELLED_CALLS = [
    ("get_order_status", "Return the shipping status of an order.", {"order_id": "A17"}, "safe"),
    ("search_products", "Search the catalogue for products matching a query.", {"query": "red shoes"}, "safe"),
    ("list_invoices", "List a customer's invoices.", {"customer_id": "C9"}, "safe"),
    ("read_file", "Read a text file and return its contents.", {"path": "notes.txt"}, "safe"),
    (
        "set_shipping_address",
        "Set the shipping address of an order to the given address.",
        {"order_id": "A17", "address": "1 Main St"},
        "retry_safe",
    ),
    ("update_ticket_status", "Set a support ticket's status.", {"ticket_id": "T4", "status": "closed"}, "retry_safe"),
    ("upsert_contact", "Create or update a contact by email address.", {"email": "a@b.c", "name": "Ana"}, "retry_safe"),
    ("put_object", "Store a file under a key, replacing any file with that key.", {"key": "r.pdf"}, "retry_safe"),
    (
        "charge_card",
        "Charge an amount to the customer's credit card.",
        {"customer_id": "C9", "amount": 20},
        "retry_unsafe",
    ),
    ("send_email", "Send an email to a recipient.", {"to": "a@b.c", "body": "Hello"}, "retry_unsafe"),
    ("add_comment", "Add a comment to a support ticket.", {"ticket_id": "T4", "text": "Done"}, "retry_unsafe"),
    ("create_order", "Place a new order for a product.", {"sku": "S1", "quantity": 1}, "retry_unsafe"),
    (
        "delete_account",
        "Permanently delete a customer account and all its data.",
        {"customer_id": "C9"},
        "irreversible",
    ),
    ("refund_payment", "Refund a payment to the customer's card.", {"payment_id": "P3", "amount": 30}, "irreversible"),
    ("drop_table", "Drop a database table.", {"table": "orders"}, "irreversible"),
    (
        "wire_transfer",
        "Transfer money from the company account to an external bank account.",
        {"iban": "DE00", "amount": 5000},
        "irreversible",
    ),
]


def summary(latencies_ms: list[float]) -> str:
    ordered = sorted(latencies_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"mean {statistics.fmean(ordered):6.2f} ms  p50 {statistics.median(ordered):6.2f} ms  p95 {p95:6.2f} ms"


def time_turns(graph, tool_name: str, turns: int) -> list[float]:
    latencies = []
    for turn in range(turns):
        message = AIMessage("", tool_calls=[{"name": tool_name, "args": {"value": turn}, "id": f"c{turn}"}])
        started = time.perf_counter()
        graph.invoke({"messages": [message]}, {"configurable": {"thread_id": f"bench-{turn}"}})
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def overhead(turns: int, postgres_url: str | None) -> None:
    @tool
    def lookup(value: int) -> str:
        """Look a value up."""
        return str(value)

    @tool
    def append(value: int) -> str:
        """Append a value to a log."""
        return str(value)

    policy = ConsequencePolicy(tools={"lookup": "safe", "append": "retry_unsafe"})
    folder = Path(tempfile.mkdtemp(prefix="agentgraph-bench-"))
    stores = {"sqlite": SQLiteIdempotencyStore(folder / "keys.db")}
    if postgres_url:
        stores["postgres"] = PostgresIdempotencyStore(postgres_url)

    def graph_of(node):
        return StateGraph(MessagesState).add_node("tools", node).add_edge(START, "tools").compile()

    plain = graph_of(ToolNode([lookup, append]))
    print(f"one graph turn, one tool call ({turns} turns each)")
    print(f"  ToolNode, no guard:             {summary(time_turns(plain, 'append', turns))}")
    for backend, store in stores.items():
        guarded = graph_of(create_guarded_tool_node([lookup, append], policy=policy, idempotency_store=store))
        print(f"  guarded, safe ({backend}):       {summary(time_turns(guarded, 'lookup', turns))}")
        print(f"  guarded, retry_unsafe ({backend}): {summary(time_turns(guarded, 'append', turns))}")
        fingerprint = request_fingerprint("append", {"value": 1})
        latencies = []
        for _ in range(turns):
            started = time.perf_counter()
            store.complete(store.begin(uuid.uuid4().hex, fingerprint), {"content": "1"})
            latencies.append((time.perf_counter() - started) * 1000)
        print(f"  store begin+complete ({backend}): {summary(latencies)}")


def slm_classification(thresholds: list[float]) -> None:
    from agentgraph.slm import TransformersSLM

    slm = TransformersSLM()
    prior = content_free_prior(slm)
    print("SLM prior for a content-free call: " + ", ".join(f"{label} {p:.3f}" for label, p in prior.items()))
    verdicts = []
    for name, description, arguments, expected in LABELLED_CALLS:
        undeclared = tool(name, description=description)(lambda **kwargs: "")
        verdict = classify_tool_call(undeclared, arguments, policy=ConsequencePolicy(confidence_threshold=0.0), slm=slm)
        verdicts.append((verdict, expected))
        print(
            f"  {name:22s} expected {expected:13s} slm {verdict.consequence.value:13s} "
            f"calibrated p={verdict.confidence:.2f}"
        )
    correct = sum(v.consequence == expected for v, expected in verdicts)
    print(
        f"SLM ({slm.model_name}) on {len(verdicts)} labelled calls: accuracy {correct / len(verdicts):.2f}, "
        f"mean latency {statistics.fmean(v.latency_ms for v, _ in verdicts):.0f} ms"
    )
    for threshold in thresholds:
        decided = [(v, e) for v, e in verdicts if v.confidence >= threshold]
        accuracy = sum(v.consequence == e for v, e in decided) / len(decided) if decided else float("nan")
        print(
            f"  threshold {threshold:.2f}: SLM decides {len(decided)}/{len(verdicts)}, accuracy there {accuracy:.2f}; "
            f"{len(verdicts) - len(decided)} go to the LLM (or to a person without one)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--postgres", metavar="URL", help="also measure a PostgreSQL store at this URL")
    parser.add_argument("--no-slm", action="store_true", help="skip the SLM classification part")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    args = parser.parse_args()
    overhead(args.turns, args.postgres)
    if not args.no_slm:
        slm_classification(args.thresholds)


if __name__ == "__main__":
    main()
