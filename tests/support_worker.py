"""A worker of the two-worker test: the example graph built once on a shared PostgreSQL database, taking runs
from a run queue there, the way an Agent Server's workers take runs.

Usage: ``python tests/support_worker.py DATABASE_URL DATA_DIR NAME``. The graph is
``build_customer_support_graph(database_url=..., data_dir=...)``: checkpoints, idempotency keys, the trace
store and decision log in PostgreSQL, the shop in DATA_DIR (shared by the workers). No LLM: escalations end
in a handoff ticket. The SLM is the real embedded one.

A run is a message or the answer to a pending approval, on one thread. A worker claims the oldest pending
run with ``SELECT ... FOR UPDATE SKIP LOCKED`` and holds it under a lease it renews every second; a run
whose worker died (its lease ran out) is claimed again, by whichever worker asks first. A run may name a
worker that must not take it (``avoid_worker``): the test sends each approval's answer to the other worker.

A run taken again resumes rather than repeats: every checkpoint a run writes carries its id in its metadata
(``agentgraph_run``), so the new attempt finds where the dead one stopped. No checkpoint of the run yet:
it starts over (a resume value is sent again; the idempotency store answers a call the dead attempt made).
A checkpoint of the run with tasks left (``snapshot.tasks``: ``snapshot.next`` leaves out the tasks whose
writes the dead attempt saved, and a run stopped right after one would look finished): the graph continues
from it. Otherwise the run had finished, or paused at an approval.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

LEASE_S = 6.0
"""How long a claimed run is the claimer's without a heartbeat; a killed worker's run is free this long after."""
HEARTBEAT_S = 1.0
RUN_MARKER = "agentgraph_run"
"""The run-config metadata key (and so checkpoint metadata key) that names the run a checkpoint belongs to."""

QUEUE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs ("
    " id BIGSERIAL PRIMARY KEY, thread_id TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,"
    " avoid_worker TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,"
    " worker TEXT, pid INTEGER, lease_expires_at TIMESTAMPTZ, result TEXT, error TEXT,"
    " attempted_by TEXT[] NOT NULL DEFAULT '{}', finished_at TIMESTAMPTZ)",
    "CREATE TABLE IF NOT EXISTS workers (name TEXT NOT NULL, pid INTEGER PRIMARY KEY, ready_at TIMESTAMPTZ NOT NULL)",
)

_CLAIM = """
UPDATE runs SET status = 'running', attempts = attempts + 1, worker = %(name)s, pid = %(pid)s,
       attempted_by = attempted_by || %(who)s::text,
       lease_expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = (
    SELECT id FROM runs
    WHERE (status = 'pending' OR (status = 'running' AND lease_expires_at < clock_timestamp()))
      AND (avoid_worker IS NULL OR avoid_worker <> %(name)s)
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, thread_id, kind, payload, attempts
"""


def create_queue(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in QUEUE_SCHEMA:
            connection.execute(statement)


class RunQueue:
    """This worker's side of the queue: claim a run, keep its lease, settle it."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.pid = os.getpid()
        self._conn = psycopg.connect(url, autocommit=True)
        self._beat = psycopg.connect(url, autocommit=True)
        self._held: tuple[int, int] | None = None  # (run id, attempt) while a run is held
        self._guard = threading.Lock()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def ready(self) -> None:
        self._conn.execute(
            "INSERT INTO workers (name, pid, ready_at) VALUES (%s, %s, clock_timestamp())", (self.name, self.pid)
        )

    def claim(self) -> dict[str, Any] | None:
        who = f"{self.name}:{self.pid}"
        row = self._conn.execute(_CLAIM, {"name": self.name, "pid": self.pid, "who": who, "lease": LEASE_S}).fetchone()
        if row is None:
            return None
        run = dict(zip(("id", "thread_id", "kind", "payload", "attempts"), row, strict=True))
        run["payload"] = json.loads(run["payload"])
        with self._guard:
            self._held = (run["id"], run["attempts"])
        return run

    def finish(self, run: dict[str, Any], *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._guard:
            self._held = None
        # Only the attempt that still holds the run settles it (a lease that ran out went to another worker).
        self._conn.execute(
            "UPDATE runs SET status = %s, result = %s, error = %s, finished_at = clock_timestamp(), lease_expires_at = NULL"
            " WHERE id = %s AND attempts = %s AND status = 'running'",
            ("failed" if error else "done", json.dumps(result) if result is not None else None, error, run["id"],
             run["attempts"]),
        )  # fmt: skip

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._guard:
                held = self._held
            if held is not None:
                self._beat.execute(
                    "UPDATE runs SET lease_expires_at = clock_timestamp() + make_interval(secs => %s)"
                    " WHERE id = %s AND attempts = %s AND status = 'running'",
                    (LEASE_S, *held),
                )


def execute(graph: Any, run: dict[str, Any], url: str, name: str) -> dict[str, Any]:
    """Run (or, taken again, finish) one run on its thread; what the thread shows afterwards."""
    from langgraph.types import Command

    from agentgraph.running import hold_thread, run_turn

    thread_id, payload, marker = run["thread_id"], run["payload"], f"run-{run['id']}"
    metadata = {RUN_MARKER: marker}
    resume = payload.get("resume")
    message = payload.get("message")
    how = "fresh"
    if run["attempts"] == 1:
        run_turn(graph, message, resume=resume, thread_id=thread_id, inputs={"customer_id": payload.get("customer")},
                 metadata=metadata, database_url=url, wait_s=120)  # fmt: skip
    else:
        config = {"configurable": {"thread_id": thread_id}, "metadata": metadata}
        with hold_thread(thread_id, database_url=url, wait_s=120):
            snapshot = graph.get_state(config)
            mine = (snapshot.metadata or {}).get(RUN_MARKER) == marker
            if not mine:
                how = "started over"
                graph_input = (
                    Command(resume=resume)
                    if resume is not None
                    else {"text": message, "customer_id": payload.get("customer")}
                )
                graph.invoke(graph_input, config)
            elif snapshot.tasks and not snapshot.interrupts:
                # Tasks left: ``tasks``, not ``next``, which leaves out those whose writes the dead attempt saved.
                how = "continued"
                graph.invoke(None, config)
            else:
                how = "had finished"
    snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
    values = snapshot.values
    pending = snapshot.interrupts
    return {
        "worker": name, "pid": os.getpid(), "attempt": run["attempts"], "how": how,
        "route": values.get("route"), "intent": values.get("intent"),
        "response": None if pending else values.get("response"),
        "interrupt": {"id": pending[0].id, **pending[0].value} if pending else None,
    }  # fmt: skip


def main(url: str, data_dir: Path, name: str) -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two cores: one each, rather than four threads fighting over two

    from agentgraph.graphs.customer_support import build_customer_support_graph

    graph = build_customer_support_graph(data_dir=data_dir, database_url=url)
    queue = RunQueue(url, name)
    queue.ready()
    print(f"worker {name} ({os.getpid()}) ready", file=sys.stderr, flush=True)
    while True:
        run = queue.claim()
        if run is None:
            time.sleep(0.05)
            continue
        try:
            result = execute(graph, run, url, name)
        except Exception as exc:  # recorded for the test to report; the worker goes on
            queue.finish(run, error=f"{type(exc).__name__}: {exc}")
        else:
            queue.finish(run, result=result)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
