"""Runs one shop graph turn in a process of its own, so a test can kill it or answer its approval in another.

Tests start it with :func:`run_worker`. Usage: ``python tests/consequence_worker.py --shop DB --decisions DB
--keys AT --checkpoints AT ACTION PAYLOAD``; the idempotency keys and the checkpoints are each at a
SQLite file or a PostgreSQL URL, the thread is :data:`WORKER_THREAD`'s, and ACTION is one of:

- ``crash``: PAYLOAD is ``[tool, arguments]``; the tool commits its write and then kills this process.
- ``ask``: PAYLOAD is a list of ``[tool, arguments]`` calls; prints the pending approvals' requests as JSON.
- ``answer``: PAYLOAD is the resume value for the thread's pending approval; prints the turn's last tool
  message (content and status) as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from consequence_shop import Shop, open_checkpointer, shop_graph, tool_calls
from langgraph.types import Command

from agentgraph.idempotency import open_idempotency_store
from agentgraph.records.decisions import SQLiteDecisionLog

WORKER_THREAD = {"configurable": {"thread_id": "worker"}}


def run_worker(
    folder: Path, action: str, payload, *, keys_at: str | None = None, checkpoints_at: str | None = None
) -> subprocess.CompletedProcess:
    """``action`` in a new worker process: the shop and the decision log in ``folder``, the keys and the
    checkpoints at ``keys_at`` and ``checkpoints_at`` (default: ``keys.db`` and ``checkpoints.db`` in ``folder``)."""
    where = ["--shop", str(folder / "shop.db"), "--decisions", str(folder / "decisions.db"),
             "--keys", keys_at or str(folder / "keys.db"), "--checkpoints", checkpoints_at or str(folder / "checkpoints.db")]  # fmt: skip
    return subprocess.run(
        [sys.executable, __file__, *where, action, json.dumps(payload)], capture_output=True, text=True, timeout=300
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--shop", "--decisions", "--keys", "--checkpoints"):
        parser.add_argument(option, required=True)
    parser.add_argument("action", choices=["crash", "ask", "answer"])
    parser.add_argument("payload", type=json.loads)
    args = parser.parse_args(argv)

    shop = Shop(args.shop)
    store = open_idempotency_store(args.keys)
    with open_checkpointer(args.checkpoints) as saver:
        graph = shop_graph(shop, store, checkpointer=saver, decision_log=SQLiteDecisionLog(args.decisions))
        if args.action == "crash":
            tool_name, arguments = args.payload
            shop.inject(tool_name, "exit_after_commit")
            graph.invoke(tool_calls((tool_name, arguments)), WORKER_THREAD)
        elif args.action == "ask":
            paused = graph.invoke(tool_calls(*map(tuple, args.payload)), WORKER_THREAD)
            requests = [request for pending in paused["__interrupt__"] for request in pending.value["action_requests"]]
            print(json.dumps(requests))
        else:
            done = graph.invoke(Command(resume=args.payload), WORKER_THREAD)
            print(json.dumps({"content": done["messages"][-1].content, "status": done["messages"][-1].status}))
    store.close()
    shop.close()


if __name__ == "__main__":
    main()
