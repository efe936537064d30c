"""PostgreSQL for several workers: the encrypted checkpointer, the advisory thread lock, the shared stores'
set-up, ``distill --traces URL`` and ``agentgraph run --database-url`` end to end.

Real parts: a throwaway PostgreSQL server (``tests/postgres_server.py``), LangGraph graphs on
``langgraph-checkpoint-postgres``, real subprocesses for the second holder of a thread and for the CLI.
The trace store and decision log's contract, shared with SQLite, is tested on both backends in
``tests/test_distill_traces.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import TypedDict

import psycopg
import pytest
from langgraph.graph import START, StateGraph

from agentgraph.checkpointing import (
    CHECKPOINT_KEY_ENV,
    async_postgres_checkpointer,
    checkpoint_location,
    encrypted_serializer,
    new_checkpoint_key,
    postgres_checkpointer,
)
from agentgraph.errors import CheckpointDecryptionError, ConfigError, ThreadBusyError
from agentgraph.postgres import describe_url
from agentgraph.running import hold_thread

CARD = "4111 1111 1111 1111"
CLI = [sys.executable, "-m", "agentgraph.cli", "run", "customer-support"]


class Chat(TypedDict, total=False):
    text: str
    turns: int
    response: str


def echo_graph(checkpointer):
    builder = StateGraph(Chat)
    builder.add_node("reply", lambda state: {"response": f"re: {state['text']}", "turns": state.get("turns", 0) + 1})
    return builder.add_edge(START, "reply").compile(checkpointer=checkpointer)


def stored_bytes(url: str) -> bytes:
    """Everything the checkpointer's tables hold, as one byte string."""
    with psycopg.connect(url) as db:
        rows = [row for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
                for row in db.execute(f"SELECT * FROM {table}").fetchall()]  # fmt: skip
    return b"".join(
        bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode() for row in rows for value in row
    )


# --- the checkpointer ---------------------------------------------------------------------------------------


def test_the_postgres_checkpointer_round_trips_a_thread_that_it_stores_encrypted(postgres_url):
    key = new_checkpoint_key()
    config = {"configurable": {"thread_id": "t1"}}
    echo_graph(postgres_checkpointer(postgres_url, key=key)).invoke({"text": f"my card is {CARD}"}, config)

    # Another process's saver, with the same key, reads the thread back exactly.
    again = echo_graph(postgres_checkpointer(postgres_url, key=key))
    assert again.get_state(config).values == {
        "text": f"my card is {CARD}",
        "turns": 1,
        "response": f"re: my card is {CARD}",
    }
    assert again.invoke({"text": "and again"}, config)["turns"] == 2
    assert CARD.encode() not in stored_bytes(postgres_url) and b"and again" not in stored_bytes(postgres_url)
    assert checkpoint_location(again.checkpointer).startswith("the PostgreSQL database test_")

    with pytest.raises(CheckpointDecryptionError, match=f"Set {CHECKPOINT_KEY_ENV}"):
        echo_graph(postgres_checkpointer(postgres_url, key=new_checkpoint_key())).get_state(config)


def test_langgraphs_own_postgres_saver_would_keep_text_in_the_clear_despite_the_encrypted_serializer(postgres_url):
    # Why EncryptedPostgresSaver exists: PostgresSaver writes str values into its JSONB column, past the serde.
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(postgres_url) as saver:
        saver.serde = encrypted_serializer(new_checkpoint_key())
        saver.setup()
        echo_graph(saver).invoke({"text": f"my card is {CARD}"}, {"configurable": {"thread_id": "t1"}})
    assert CARD.encode() in stored_bytes(postgres_url)


def test_a_shared_database_needs_the_key_in_the_environment(postgres_url, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{CHECKPOINT_KEY_ENV}, the same on every worker"):
        postgres_checkpointer(postgres_url)
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, base64.urlsafe_b64encode(new_checkpoint_key()).decode())
    echo_graph(postgres_checkpointer(postgres_url)).invoke({"text": "hi"}, {"configurable": {"thread_id": "t1"}})


def test_the_async_postgres_checkpointer_shares_the_tables_and_the_key(postgres_url):
    key = new_checkpoint_key()
    config = {"configurable": {"thread_id": "t1"}}

    async def run() -> dict:
        saver = await async_postgres_checkpointer(postgres_url, key=key)
        try:
            return await echo_graph(saver).ainvoke({"text": f"card {CARD}"}, config)
        finally:
            await saver.conn.close()

    assert asyncio.run(run())["turns"] == 1
    assert echo_graph(postgres_checkpointer(postgres_url, key=key)).get_state(config).values["text"] == f"card {CARD}"
    assert CARD.encode() not in stored_bytes(postgres_url)


def test_workers_that_start_at_once_set_up_the_same_tables_without_a_race(postgres_url):
    from agentgraph.idempotency import PostgresIdempotencyStore
    from agentgraph.records.traces import PostgresTraceStore

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start_worker() -> None:
        try:
            barrier.wait()
            postgres_checkpointer(postgres_url, key=new_checkpoint_key()).conn.close()
            PostgresTraceStore(postgres_url).close()
            PostgresIdempotencyStore(postgres_url).close()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=start_worker) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []


# --- the thread lock ---------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from agentgraph.running import hold_thread
with hold_thread(sys.argv[2], database_url=sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold_elsewhere(url: str, thread_id: str, seconds: float) -> subprocess.Popen:
    """Another process (another worker, as far as the lock can tell) holding ``thread_id`` for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, thread_id, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_thread_held_by_another_worker_waits_then_is_busy_and_frees_when_that_worker_is_killed(postgres_url):
    holder = hold_elsewhere(postgres_url, "t1", 300)
    try:
        started = time.monotonic()
        busy = f"thread 't1' is busy: another turn on it (on another worker of {describe_url(postgres_url)}) did not finish within 0.5 s"
        with pytest.raises(ThreadBusyError, match=re.escape(busy)):
            with hold_thread("t1", database_url=postgres_url, wait_s=0.5):
                pass
        assert time.monotonic() - started >= 0.5
        with hold_thread("t2", database_url=postgres_url, wait_s=0):  # another thread is free at once
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        # The server drops the dead worker's session, and its lock with it: no lease to wait out.
        started = time.monotonic()
        with hold_thread("t1", database_url=postgres_url, wait_s=10):
            assert time.monotonic() - started < 5
    finally:
        holder.kill()


def test_a_turn_waits_for_the_other_workers_turn_on_its_thread_to_finish(postgres_url):
    holder = hold_elsewhere(postgres_url, "t1", 1.0)
    started = time.monotonic()
    with hold_thread("t1", database_url=postgres_url, wait_s=60):
        assert holder.poll() is not None or time.monotonic() - started >= 0.5, "it waited for the holder"
    assert holder.wait(timeout=30) == 0
    # Held again at once, on a connection kept for the next turn.
    with hold_thread("t1", database_url=postgres_url, wait_s=0):
        pass


def test_url_passwords_stay_out_of_messages():
    assert (
        describe_url("postgresql://agent:s3cret@db.internal:5433/agent") == "postgresql://agent@db.internal:5433/agent"
    )
    assert describe_url("postgresql://agent@db/agent") == "postgresql://agent@db/agent"


# --- distill --traces URL ----------------------------------------------------------------------------------


def test_distill_dataset_reads_a_trace_store_in_postgres(postgres_url, tmp_path, capsys):
    from agentgraph.cli import main
    from agentgraph.records.traces import LLMCall, open_trace_store

    store = open_trace_store(postgres_url)
    requests = {"where is my parcel": "track_order", "where is order 12345": "track_order",
                "cancel my order please": "cancel_order", "i want to cancel order 4": "cancel_order"}  # fmt: skip
    for text, intent in requests.items():
        store.record_call(LLMCall(node="router", step_type="route", output=intent, accepted=True,
                                  messages=[{"role": "user", "content": text}]))  # fmt: skip
    store.close()

    out = tmp_path / "dataset"
    assert main(["distill", "dataset", "--role", "route", "--traces", postgres_url, "--out", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["sources"]["traces"]["accepted"] == 4 and manifest["sources"]["traces"]["path"] == postgres_url
    kept = [
        json.loads(line)
        for split in ("train", "dev", "test")
        for line in (out / f"{split}.jsonl").read_text().splitlines()
    ]
    assert {example["input"] for example in kept} <= set(requests) and kept


# --- agentgraph run --database-url -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "error"),
    [
        ("decisions.db", "set", "--database-url must be a postgresql:// URL, not 'decisions.db'"),
        ("postgresql://agent@127.0.0.1:1/none", None, f"the key in {CHECKPOINT_KEY_ENV}, the same on every worker"),
        ("postgresql://agent@127.0.0.1:1/none", "short", f"{CHECKPOINT_KEY_ENV} must hold a 32-byte key"),
    ],
    ids=["not-postgres", "no-key", "bad-key"],
)
def test_the_cli_checks_the_database_url_and_the_key_before_loading_anything(tmp_path, url, key, error):
    env = {name: value for name, value in os.environ.items() if name != CHECKPOINT_KEY_ENV}
    if key is not None:
        env[CHECKPOINT_KEY_ENV] = (
            base64.urlsafe_b64encode(new_checkpoint_key()).decode() if key == "set" else "c2hvcnQ="
        )
    done = subprocess.run([*CLI, "hello", "--database-url", url, "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip

    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("agentgraph: error: ") and error in line
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_an_approval_raised_by_one_cli_process_is_answered_by_another_with_its_own_data_dir(postgres_url, tmp_path):
    from agentgraph.graphs.customer_support.shop import Shop
    from agentgraph.records.decisions import PostgresDecisionLog

    env = os.environ | {
        CHECKPOINT_KEY_ENV: base64.urlsafe_b64encode(new_checkpoint_key()).decode(),
        "AGENTGRAPH_LLM_MODEL": "",
    }
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    paused = subprocess.run([*CLI, "delete my account", "--json", "--thread", "t-pg", "--data-dir", str(first),
                             "--database-url", postgres_url], capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["interrupt"]["action_requests"][0]["name"] == "delete_account"

    # Another "machine": no file in common with the first; the database is named by the environment.
    resumed = subprocess.run([*CLI, "--thread", "t-pg", "--json", "--data-dir", str(second),
                              "--resume", '{"decisions": [{"type": "approve", "reviewer": "ops-b"}]}'],
                             capture_output=True, text=True, env=env | {"AGENTGRAPH_DATABASE_URL": postgres_url},
                             timeout=900)  # fmt: skip

    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["response"].startswith("Your account is deleted")
    assert Shop(second / "shop.db").count_writes("delete_account") == 1, "the shop stays in the data dir"
    assert Shop(first / "shop.db").count_writes() == 0
    assert {path.name for path in first.iterdir()} <= {"shop.db", "shop.db-wal", "shop.db-shm"}, "nothing else is local"
    [decision] = PostgresDecisionLog(postgres_url).decisions(kind="classify_tool")
    assert (decision.outcome, decision.metadata["reviewer"], decision.thread_id) == ("executed", "ops-b", "t-pg")
    assert [d.node for d in PostgresDecisionLog(postgres_url).decisions(kind="route")] == ["router"]
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT status FROM idempotency_keys").fetchall() == [("completed",)]


def test_the_example_offers_the_agent_server_a_checkpointer_on_the_shared_database(postgres_url, monkeypatch):
    from agentgraph.graphs.customer_support import make_checkpointer

    monkeypatch.setenv(CHECKPOINT_KEY_ENV, base64.urlsafe_b64encode(new_checkpoint_key()).decode())
    monkeypatch.setenv("AGENTGRAPH_DATABASE_URL", postgres_url)

    async def serve() -> dict:
        async with make_checkpointer() as saver:  # as the server opens it: for its lifetime
            return await echo_graph(saver).ainvoke({"text": f"card {CARD}"}, {"configurable": {"thread_id": "t1"}})

    assert asyncio.run(serve())["response"] == f"re: card {CARD}"
    assert CARD.encode() not in stored_bytes(postgres_url)
    monkeypatch.delenv("AGENTGRAPH_DATABASE_URL")
    with pytest.raises(ConfigError, match="AGENTGRAPH_DATABASE_URL names: set it"):
        asyncio.run(serve())
