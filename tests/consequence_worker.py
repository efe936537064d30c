"""Runs one shop graph turn whose tool commits its write and then kills this process.

Usage: ``python tests/consequence_worker.py FOLDER TOOL ARGUMENTS_JSON``; the shop,
key store and checkpoints live in FOLDER, the thread is ``"crash"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from agentgraph.idempotency import SQLiteIdempotencyStore
from consequence_shop import Shop, shop_graph, tool_calls

CRASH_THREAD = {"configurable": {"thread_id": "crash"}}


def main(folder: Path, tool_name: str, arguments: dict) -> None:
    shop = Shop(folder / "shop.db")
    shop.inject(tool_name, "exit_after_commit")
    store = SQLiteIdempotencyStore(folder / "keys.db")
    with SqliteSaver.from_conn_string(str(folder / "checkpoints.db")) as saver:
        shop_graph(shop, store, checkpointer=saver).invoke(tool_calls((tool_name, arguments)), CRASH_THREAD)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
