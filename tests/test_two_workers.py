"""Two workers on one PostgreSQL database serve the example graph's threads, SIGKILLed at random, and nothing
runs twice or goes missing.

Real parts: two long-lived worker processes (``tests/support_worker.py``), each building the example graph
once with ``database_url=`` a fresh database on a real PostgreSQL server (checkpoints, idempotency keys,
the trace store and decision log there) and sharing a data dir for the shop's SQLite file; the embedded
SLM, the trained router and reranker. They take runs from a queue in the database (``FOR UPDATE SKIP
LOCKED`` and a lease); the test enqueues 200+ turns on many threads (policy questions, handoffs, order
lookups, cancellations that run once, refunds that wait for a person's approval), sends each approval's
answer (approve, edit or reject) to the worker that did not raise it, and SIGKILLs a random busy worker at
random moments, restarting it. Then it checks the shop, the threads and the decision log.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support_worker import create_queue

WORKER = Path(__file__).with_name("support_worker.py")
SEED = 20
KNOWLEDGE = [
    "which payment methods can I use?", "what is your refund policy?", "what delivery options do you have?",
    "is there a fee for cancelling?", "how do I create an account?", "I forgot my password",
    "how do I subscribe to the newsletter?", "how can I contact customer service?",
]  # fmt: skip
HANDOFFS = ["I want to talk to a human agent", "What's the weather in Lisbon tomorrow?"]
REFUNDS, CANCELS, LOOKUPS, CHAT_TURNS = 8, 6, 2, 184
"""The mix: each refund is two turns (the request, then the answer to its approval); the chat turns are
policy questions and handoffs on threads of one to six turns. Writes and lookups run the SLM (seconds
each on two cores), the rest take a fraction of a second."""
KILLS = 6
ANSWERS = ("approve", "edit", "reject")
IN_FLIGHT = 6
"""Threads with a run queued or running at once: enough to keep both workers busy."""
DEADLINE_S = 1200


@dataclass(eq=False)
class Thread:
    """One conversation: its turns in order, the ones still to send, and what came back."""

    id: str
    customer: str
    turns: list[dict[str, Any]]
    kind: str
    target: str | None = None
    answer: str | None = None
    sent: int = 0
    raised_by: str | None = None
    approval: dict[str, Any] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def shop_targets(shop_path: Path, rng: random.Random) -> tuple[list[tuple[str, str, float]], list[tuple[str, str]]]:
    """Delivered orders with nothing refunded yet (customer, order, total) and processing orders (customer,
    order), each order of a different customer."""
    with sqlite3.connect(shop_path) as shop:
        delivered = shop.execute(
            "SELECT customer_id, id, total FROM orders o WHERE status = 'delivered' AND total >= 40 AND customer_id != 'C1001'"
            " AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id) ORDER BY id"
        ).fetchall()
        processing = shop.execute(
            "SELECT customer_id, id FROM orders WHERE status = 'processing' AND customer_id != 'C1001' ORDER BY id"
        ).fetchall()
    refunds, cancels, used = [], [], set()
    for customer, order, total in rng.sample(delivered, len(delivered)):
        if customer not in used and len(refunds) < REFUNDS:
            used.add(customer)
            refunds.append((customer, order, total))
    for customer, order in rng.sample(processing, len(processing)):
        if customer not in used and len(cancels) < CANCELS:
            used.add(customer)
            cancels.append((customer, order))
    return refunds, cancels


def plan_threads(shop_path: Path, rng: random.Random) -> list[Thread]:
    refunds, cancels = shop_targets(shop_path, rng)
    # Half the refunds are raised on A, half on B (their answers then go to the other one).
    threads = [
        Thread(f"refund-{order}", customer, [{"message": f"I need a refund of $20 for order {order}", "avoid": "AB"[n % 2]}],
               "refund", target=order, answer=ANSWERS[n % len(ANSWERS)])
        for n, (customer, order, _) in enumerate(refunds)
    ]  # fmt: skip
    threads += [
        Thread(f"cancel-{order}", customer, [{"message": f"I want to cancel order {order}"}], "cancel", target=order)
        for customer, order in cancels
    ]
    threads += [Thread(f"lookup-{n}", "C1001", [{"message": "track order 10001"}], "lookup") for n in range(LOOKUPS)]
    left, n = CHAT_TURNS, 0
    while left:
        size = min(left, rng.randint(1, 6))
        turns = [{"message": rng.choice(KNOWLEDGE if rng.random() < 0.75 else HANDOFFS)} for _ in range(size)]
        threads.append(Thread(f"chat-{n}", "C1001", turns, "chat"))
        left, n = left - size, n + 1
    rng.shuffle(threads)
    return threads


def answer_for(thread: Thread) -> dict[str, Any]:
    """The reviewer's answer to the thread's approval: approve, a smaller amount, or reject."""
    [action] = thread.approval["action_requests"]
    if thread.answer == "approve":
        return {"decisions": [{"type": "approve", "reviewer": "ops-b"}]}
    if thread.answer == "edit":
        arguments = {**action["arguments"], "amount": 15.0}
        return {"decisions": [{"type": "edit", "edited_action": {"name": action["name"], "arguments": arguments},
                               "reviewer": "ops-b"}]}  # fmt: skip
    return {"decisions": [{"type": "reject", "message": "not eligible", "reviewer": "ops-b"}]}


class Workers:
    """Worker processes A and B: started, SIGKILLed and restarted."""

    def __init__(self, url: str, data_dir: Path, logs: Path) -> None:
        self.url, self.data_dir, self.logs = url, data_dir, logs
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts = Counter()

    def start(self, name: str) -> None:
        self.starts[name] += 1
        log = (self.logs / f"{name}-{self.starts[name]}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, str(WORKER), self.url, str(self.data_dir), name], stdout=log, stderr=subprocess.STDOUT,
            cwd=WORKER.parent,
        )  # fmt: skip

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def ready(self, db: psycopg.Connection) -> set[str]:
        """The names whose current process has loaded its graph and is taking runs."""
        pids = {process.pid: name for name, process in self.processes.items() if process.poll() is None}
        rows = db.execute("SELECT pid FROM workers WHERE pid = ANY(%s)", (list(pids),)).fetchall()
        return {pids[pid] for (pid,) in rows}

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"worker {name} exited by itself ({process.returncode}): see {self.logs}"


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 120)
def test_two_workers_on_one_postgres_survive_random_sigkills(postgres_url, tmp_path, monkeypatch):
    from agentgraph.checkpointing import postgres_checkpointer
    from agentgraph.graphs.customer_support import STATE_SCHEMAS
    from agentgraph.graphs.customer_support.shop import Shop

    started = time.monotonic()
    rng = random.Random(SEED)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("AGENTGRAPH_CHECKPOINT_KEY", key)  # the workers inherit it: one key for both
    monkeypatch.setenv("AGENTGRAPH_LLM_MODEL", "")
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    logs.mkdir()
    Shop(data_dir / "shop.db")  # seeded once, before the workers open it
    threads = plan_threads(data_dir / "shop.db", rng)
    create_queue(postgres_url)
    db = psycopg.connect(postgres_url, autocommit=True)
    workers = Workers(postgres_url, data_dir, logs)
    for name in ("A", "B"):
        workers.start(name)

    waiting = {t.id: t for t in threads}  # not yet finished
    queued: dict[int, Thread] = {}  # run id -> its thread
    total_runs = sum(len(t.turns) for t in threads) + REFUNDS  # each refund's answer too, if it asks for one
    kill_at = sorted(rng.sample(range(total_runs // 10, total_runs * 9 // 10), KILLS))
    kills: list[dict[str, Any]] = []
    kill_due: float | None = None  # when the next kill happens, once both workers are up
    done_runs = 0
    try:
        while waiting:
            assert time.monotonic() - started < DEADLINE_S, f"{done_runs} of {total_runs} runs in {DEADLINE_S} s"
            workers.check_alive()
            kill_pending = kill_due is None and len(kills) < KILLS and done_runs >= kill_at[len(kills)]
            both_up = workers.ready(db) == {"A", "B"}
            # Keep IN_FLIGHT threads busy: each thread's next turn goes in once its last one is done. While a
            # kill waits for the last killed worker to be back, no new turn goes in: the turns are fast enough
            # that they would otherwise all be done before the last kill.
            if both_up or not kill_pending:
                idle = [t for t in waiting.values() if t not in queued.values()]
                for thread in idle[: max(0, IN_FLIGHT - len(queued))]:
                    enqueue(db, thread, queued)
            for run_id, status, result, error in db.execute(
                "SELECT id, status, result, error FROM runs WHERE id = ANY(%s) AND status IN ('done', 'failed')",
                (list(queued),),
            ).fetchall():
                assert status == "done", f"run {run_id} failed: {error}"
                thread = queued.pop(run_id)
                settle(thread, json.loads(result), waiting)
                done_runs += 1
            if kill_pending and both_up:  # the other one is up to take over
                kill_due = time.monotonic() + rng.uniform(0, 1.5)
            if kill_due is not None and time.monotonic() >= kill_due:
                kills.append(kill_a_busy_worker(db, workers, rng))
                kill_due = None
            time.sleep(0.05)
    except BaseException:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        raise
    finally:
        workers.stop()
        db.close()
    wall_s = time.monotonic() - started

    figures = check_everything(postgres_url, data_dir, threads, postgres_checkpointer(postgres_url, *STATE_SCHEMAS))
    figures.update(turns=done_runs, kills=len(kills), wall_s=round(wall_s, 1), worker_starts=dict(workers.starts),
                   kills_of_a_busy_worker=sum(kill["busy"] for kill in kills))  # fmt: skip
    print("\ntwo workers:", json.dumps(figures, sort_keys=True))
    assert done_runs == sum(len(t.turns) for t in threads) + figures["approvals"].get("raised", 0) >= 200
    assert len(kills) == KILLS and figures["kills_of_a_busy_worker"] >= KILLS // 2, kills


def enqueue(db: psycopg.Connection, thread: Thread, queued: dict[int, Thread]) -> None:
    if thread.sent < len(thread.turns):
        turn = thread.turns[thread.sent]
        kind, payload, avoid = "message", {"message": turn["message"], "customer": thread.customer}, turn.get("avoid")
    else:  # the approval the refund raised: answered on the worker that did not raise it
        kind, payload, avoid = "resume", {"resume": answer_for(thread)}, thread.raised_by
    [(run_id,)] = db.execute(
        "INSERT INTO runs (thread_id, kind, payload, avoid_worker) VALUES (%s, %s, %s, %s) RETURNING id",
        (thread.id, kind, json.dumps(payload), avoid),
    ).fetchall()
    thread.sent += 1
    queued[run_id] = thread


def settle(thread: Thread, result: dict[str, Any], waiting: dict[str, Thread]) -> None:
    """Record a finished run; the thread is finished when its turns are sent and no approval waits."""
    thread.results.append(result)
    if result["interrupt"] is not None and thread.approval is None:
        thread.approval, thread.raised_by = result["interrupt"], result["worker"]
        return  # its answer is the next run
    if thread.sent >= len(thread.turns):
        del waiting[thread.id]


def kill_a_busy_worker(db: psycopg.Connection, workers: Workers, rng: random.Random) -> dict[str, Any]:
    """SIGKILL a worker that is in the middle of a run (either, when neither is) and start it again."""
    pids = {process.pid: name for name, process in workers.processes.items()}
    busy = sorted({pids[pid] for (pid,) in db.execute("SELECT pid FROM runs WHERE status = 'running'") if pid in pids})
    name = rng.choice(busy or ["A", "B"])
    workers.kill(name)
    workers.start(name)
    return {"worker": name, "busy": bool(busy)}


def story(url: str, checkpointer: Any, thread_id: str) -> str:
    """What happened on a thread, for a failure's message: its runs and its checkpoints."""
    with psycopg.connect(url) as db:
        runs = db.execute(
            "SELECT id, kind, status, attempts, attempted_by, result FROM runs WHERE thread_id = %s ORDER BY id",
            (thread_id,),
        ).fetchall()
    lines = [f"thread {thread_id}:"]
    for run_id, kind, status, attempts, attempted_by, result in runs:
        how = json.loads(result)["how"] if result else None
        lines.append(f"  run {run_id} {kind} {status} attempts={attempts} by={attempted_by} how={how}")
    for saved in reversed(list(checkpointer.list({"configurable": {"thread_id": thread_id}}))):
        parent = saved.parent_config["configurable"]["checkpoint_id"][-8:] if saved.parent_config else None
        lines.append(
            f"  checkpoint {saved.checkpoint['id'][-8:]} parent={parent} step={saved.metadata.get('step')}"
            f" {saved.metadata.get('source')} {saved.metadata.get('agentgraph_run')} next={saved.checkpoint.get('updated_channels')}"
        )
    return "\n".join(lines)


def check_everything(url: str, data_dir: Path, threads: list[Thread], checkpointer: Any) -> dict[str, Any]:
    """The shop, the threads' state and the decision log, against what was sent; the figures for the report."""
    from agentgraph.records.decisions import PostgresDecisionLog

    with sqlite3.connect(data_dir / "shop.db") as shop:
        writes = Counter(shop.execute("SELECT tool, target FROM writes").fetchall())
        cancelled = {order for (order,) in shop.execute("SELECT id FROM orders WHERE status = 'cancelled'")}
        refunded = dict(
            shop.execute(
                "SELECT order_id, SUM(amount) FROM refunds WHERE requested_on = '2026-11-24' GROUP BY order_id"
            )
        )
    duplicates = {write: count for write, count in writes.items() if count > 1}
    assert duplicates == {}, f"writes that ran more than once: {duplicates}"

    logged = {decision.id for decision in PostgresDecisionLog(url).decisions()}
    with psycopg.connect(url) as db:
        runs = db.execute("SELECT kind, attempts, attempted_by, result FROM runs").fetchall()
        keys = Counter(status for (status,) in db.execute("SELECT status FROM idempotency_keys"))
    in_state: set[str] = set()
    approvals = Counter()
    outcomes = Counter()
    for thread in threads:
        # The thread's latest checkpoint, as the workers left it: its state, and any approval still waiting.
        latest = checkpointer.get_tuple({"configurable": {"thread_id": thread.id}})
        decisions = latest.checkpoint["channel_values"].get("decisions", [])
        pending = [value for _, channel, value in latest.pending_writes if channel == "__interrupt__"]
        in_state |= {decision.id for decision in decisions}
        # Every message is one turn of the thread, once, in order: none lost, none run twice.
        routed = [d.input for d in decisions if d.kind == "route"]
        assert routed == [turn["message"] for turn in thread.turns], story(url, checkpointer, thread.id)
        if thread.kind == "cancel":
            assert thread.target in cancelled and writes[("cancel_order", thread.target)] == 1, thread.results
        if thread.kind != "refund":
            continue
        if thread.approval is None:  # the SLM did not read the request as a refund of this order
            outcomes["no approval raised"] += 1
            continue
        approvals["raised"] += 1
        assert not pending, f"{thread.id}: the approval is still pending, unanswered"
        approvals["answered"] += 1
        [resume] = thread.results[1:]
        approvals["answered on the other worker"] += resume["worker"] != thread.raised_by
        approvals[f"raised on {thread.raised_by}, answered on {resume['worker']}"] += 1
        [verdict] = [d for d in decisions if d.kind == "classify_tool"]
        outcomes[f"{thread.answer}: {verdict.outcome}"] += 1
        refunds = writes[("issue_refund", thread.target)]
        if thread.answer == "reject":  # replayed: a retried answer found the rejection recorded under its key
            assert verdict.outcome in ("rejected", "replayed") and refunds == 0, (thread.id, verdict.outcome)
        elif verdict.outcome == "outcome_unknown":  # killed between the refund and its record: never run again
            assert refunds <= 1
        else:
            assert verdict.outcome in ("executed", "replayed") and refunds == 1, (thread.id, verdict.outcome)
            # As the person saw it (the amount the SLM read, or all that was left when it read none), or as edited.
            [action] = thread.approval["action_requests"]
            assert refunded[thread.target] == (action["arguments"]["amount"] if thread.answer == "approve" else 15.0)
    missing = in_state - logged
    assert missing == set(), f"{len(missing)} decisions in the threads' state are not in the decision log"
    assert approvals["raised"] >= REFUNDS - 2 and approvals["answered on the other worker"] == approvals["raised"]
    assert approvals["raised on A, answered on B"] >= 1 and approvals["raised on B, answered on A"] >= 1, approvals
    return {
        "approvals": dict(approvals), "refund_outcomes": dict(outcomes), "writes": sum(writes.values()),
        "writes_by_tool": dict(Counter(tool for tool, _ in writes.elements())), "duplicate_writes": len(duplicates),
        "decisions_in_state": len(in_state), "decisions_logged": len(logged),
        "decisions_of_killed_attempts": len(logged - in_state),
        "runs_taken_again": sum(attempts > 1 for _, attempts, _, _ in runs),
        "runs_by_worker": dict(Counter(json.loads(result)["worker"] for *_, result in runs)),
        "resumed_how": dict(Counter(json.loads(result)["how"] for *_, result in runs)),
        "idempotency_keys": dict(keys),
    }  # fmt: skip
