"""Turns: bad input is a typed error, and turns on one thread run one at a time, across processes too.

Real parts: LangGraph graphs on durable SQLite checkpointers, and real
subprocesses for the CLI and for the cross-process lock. Run as a script, this
file is the worker of the cross-process test (``python FILE FOLDER THREAD N``).
"""

from __future__ import annotations

import operator
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import interrupt

from agentgraph.checkpointing import sqlite_checkpointer
from agentgraph.errors import (
    ApprovalResponseError,
    InvalidTextError,
    NothingToResumeError,
    ThreadBusyError,
    TurnInputError,
    UnknownThreadError,
)
from agentgraph.running import hold_thread, run_turn

CLI = [sys.executable, "-m", "agentgraph.cli", "run", "customer-support"]


class ChatState(TypedDict, total=False):
    text: str
    messages: Annotated[list[str], operator.add]
    response: str


def chat_graph(checkpointer, *, in_reply=lambda: time.sleep(0.05)):
    """Each turn appends the message and a reply to the thread's history; ``in_reply`` runs while it replies."""

    def hear(state: ChatState) -> dict[str, Any]:
        return {"messages": [state["text"]]}

    def reply(state: ChatState) -> dict[str, Any]:
        in_reply()  # the window in which a second turn on the thread would read the same checkpoint
        return {"messages": [f"re: {state['text']}"], "response": f"re: {state['text']}"}

    builder = StateGraph(ChatState)
    builder.add_node("hear", hear).add_node("reply", reply)
    builder.add_edge(START, "hear").add_edge("hear", "reply")
    return builder.compile(checkpointer=checkpointer)


def approval_graph(checkpointer):
    """One node that asks for an approval, re-asking with an ``error`` while the answer does not fit."""

    def approve(state: ChatState) -> dict[str, Any]:
        payload: dict[str, Any] = {"action_requests": [{"name": "refund"}]}
        while True:
            answer = interrupt(payload)
            verdicts = {"approve": "approved", "reject": "rejected"}
            if isinstance(answer, dict) and answer.get("decisions") in ([{"type": t}] for t in verdicts):
                return {"response": verdicts[answer["decisions"][0]["type"]]}
            payload = {**payload, "error": "each decision must be\napprove or reject"}

    builder = StateGraph(ChatState)
    builder.add_node("approve", approve).add_edge(START, "approve")
    return builder.compile(checkpointer=checkpointer)


def run_at_once(turns: list[tuple[str, str]], graph, **options: Any) -> list[Any]:
    """Run ``(thread id, message)`` turns in threads started together; returns results or raised errors."""
    barrier = threading.Barrier(len(turns))
    outcomes: list[Any] = [None] * len(turns)

    def run(index: int, thread_id: str, message: str) -> None:
        barrier.wait()
        try:
            outcomes[index] = run_turn(graph, message, thread_id=thread_id, **options)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, *turn)) for i, turn in enumerate(turns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def forks(checkpointer, thread_id: str) -> list[str | None]:
    """The checkpoints of the thread that are the parent of more than one (None: more than one first checkpoint)."""
    config = {"configurable": {"thread_id": thread_id}}
    parents = [
        t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None for t in checkpointer.list(config)
    ]
    return sorted({parent for parent in parents if parents.count(parent) > 1}, key=str)


# --- input that cannot make a turn -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("\udcff\udcfe", "character 0 is a lone surrogate (U+DCFF, what Python makes of the byte 0xFF"),
        ("order \ud83d", "character 6 is a lone surrogate (U+D83D, half of a UTF-16 pair"),
        (12345, "the message must be text (a str), not int"),
        (b"where is my order?", "the message must be text (a str), not bytes"),
    ],
)
def test_a_message_that_is_not_valid_text_is_a_typed_error_before_the_graph_runs(tmp_path, message, error):
    checkpointer = sqlite_checkpointer(tmp_path / "checkpoints.db")
    with pytest.raises(InvalidTextError, match=re.escape(error)):
        run_turn(chat_graph(checkpointer), message, thread_id="t1")
    assert checkpointer.get_tuple({"configurable": {"thread_id": "t1"}}) is None, "nothing ran"


def test_a_thread_id_or_customer_that_is_not_valid_text_is_a_typed_error(tmp_path):
    graph = chat_graph(sqlite_checkpointer(tmp_path / "checkpoints.db"))
    with pytest.raises(InvalidTextError, match="thread id must be text"):
        run_turn(graph, "hello", thread_id=7)
    with pytest.raises(InvalidTextError, match="customer id is not valid text"):
        run_turn(graph, "hello", thread_id="t1", inputs={"customer_id": "C\udc80"})


@pytest.mark.parametrize("arguments", [{"message": "hello", "resume": {"decisions": []}}, {}])
def test_a_message_and_a_resume_value_together_or_neither_is_a_typed_error(tmp_path, arguments):
    with pytest.raises(TurnInputError, match="give a message or a resume value, not both or neither"):
        run_turn(chat_graph(sqlite_checkpointer(tmp_path / "checkpoints.db")), thread_id="t1", **arguments)


# --- resuming --------------------------------------------------------------------------------------------


def test_resuming_an_unknown_thread_says_where_it_looked(tmp_path):
    path = tmp_path / "checkpoints.db"
    with pytest.raises(UnknownThreadError, match=re.escape(f"no thread 'nope' in {path}:")):
        run_turn(
            approval_graph(sqlite_checkpointer(path)), resume={"decisions": [{"type": "approve"}]}, thread_id="nope"
        )


def test_resuming_without_a_checkpointer_is_a_typed_error():
    with pytest.raises(TurnInputError, match="compile the graph with a checkpointer"):
        run_turn(approval_graph(None), resume={"decisions": [{"type": "approve"}]}, thread_id="t1")


def test_resuming_a_settled_thread_is_an_error_not_the_old_reply(tmp_path):
    graph = approval_graph(sqlite_checkpointer(tmp_path / "checkpoints.db"))
    assert run_turn(graph, "refund me", thread_id="t1").interrupt is not None
    assert run_turn(graph, resume={"decisions": [{"type": "approve"}]}, thread_id="t1").response == "approved"

    with pytest.raises(NothingToResumeError, match="thread 't1' has no pending approval to answer"):
        run_turn(graph, resume={"decisions": [{"type": "reject"}]}, thread_id="t1")
    assert graph.get_state({"configurable": {"thread_id": "t1"}}).values["response"] == "approved"


def test_a_refused_resume_value_is_an_error_and_the_approval_stays_pending(tmp_path):
    graph = approval_graph(sqlite_checkpointer(tmp_path / "checkpoints.db"))
    run_turn(graph, "refund me", thread_id="t1")

    with pytest.raises(ApprovalResponseError, match="refused: each decision must be approve or reject. The approval"):
        run_turn(graph, resume={"decisions": [{"type": "bogus"}]}, thread_id="t1")

    assert run_turn(graph, resume={"decisions": [{"type": "reject"}]}, thread_id="t1").response == "rejected"


# --- one turn at a time per thread -------------------------------------------------------------------------


def test_concurrent_turns_on_one_thread_keep_every_message_and_one_history(tmp_path):
    checkpointer = sqlite_checkpointer(tmp_path / "checkpoints.db")
    graph = chat_graph(checkpointer)

    results = run_at_once([("shared", f"message {n}") for n in range(8)], graph)

    assert all(result.response == f"re: message {n}" for n, result in enumerate(results)), results
    history = graph.get_state({"configurable": {"thread_id": "shared"}}).values["messages"]
    assert len(history) == 16
    assert sorted(history[0::2]) == [f"message {n}" for n in range(8)], "each turn's message, then its reply"
    assert history[1::2] == [f"re: {message}" for message in history[0::2]]
    assert forks(checkpointer, "shared") == [], "one line of checkpoints"


def test_turns_on_different_threads_still_run_at_the_same_time(tmp_path):
    # Each reply waits until all eight are replying at once: serialised turns would break the barrier.
    all_replying = threading.Barrier(8, timeout=20)
    graph = chat_graph(sqlite_checkpointer(tmp_path / "checkpoints.db"), in_reply=all_replying.wait)

    results = run_at_once([(f"thread-{n}", "hello") for n in range(8)], graph)

    assert [result.response for result in results] == ["re: hello"] * 8, results


def test_a_turn_that_waits_too_long_for_its_thread_is_a_clear_error(tmp_path):
    graph = chat_graph(InMemorySaver())
    with hold_thread("busy"):
        started = time.monotonic()
        with pytest.raises(ThreadBusyError, match="thread 'busy' is busy: another turn on it \\(in this process\\)"):
            run_turn(graph, "hello", thread_id="busy", wait_s=0.2)
        assert time.monotonic() - started < 5
    assert run_turn(graph, "hello", thread_id="busy", wait_s=0.2).response == "re: hello", "free once released"


def test_turns_in_processes_sharing_a_lock_folder_keep_one_history(tmp_path):
    workers = [
        subprocess.Popen([sys.executable, __file__, str(tmp_path), "shared", str(worker), "4"], stderr=subprocess.PIPE, text=True)
        for worker in range(3)
    ]  # fmt: skip
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()

    checkpointer = sqlite_checkpointer(tmp_path / "checkpoints.db")
    history = chat_graph(checkpointer).get_state({"configurable": {"thread_id": "shared"}}).values["messages"]
    assert sorted(history[0::2]) == sorted(f"worker {w} message {n}" for w in range(3) for n in range(4))
    assert forks(checkpointer, "shared") == [], "one line of checkpoints"


def test_a_process_waiting_on_a_thread_another_process_holds_gives_up_with_a_clear_error(tmp_path):
    with hold_thread("held", lock_dir=tmp_path / "locks"):
        done = subprocess.run([sys.executable, __file__, str(tmp_path), "held", "0", "1", "0.3"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    assert done.returncode == 1
    assert f"thread 'held' is busy: another turn on it (in another process using {tmp_path / 'locks'})" in done.stderr


# --- the command line: arguments are checked before anything loads --------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ([b"\xff\xfe"], "MESSAGE is not valid text: character 0 is a lone surrogate (U+DCFF, what Python makes of the byte 0xFF"),
        (["cancel order 48213", "--thread", "t1", "--resume", '{"decisions": [{"type": "approve"}]}'],
         "give a MESSAGE or --resume, not both"),
        (["hello", "--thread", b"t\xff"], "--thread is not valid text"),
        (["hello", "--wait", "-1"], "--wait is how many seconds to wait for a busy thread"),
        (["--thread", "t1", "--resume", "[]"], '--resume must be a JSON object with "decisions"'),
    ],
    ids=["undecodable-message", "message-and-resume", "undecodable-thread", "negative-wait", "resume-not-an-object"],
)  # fmt: skip
def test_the_cli_refuses_bad_arguments_with_one_line_before_loading_anything(tmp_path, arguments, error):
    data = tmp_path / "data"
    done = subprocess.run([*CLI, *arguments, "--data-dir", str(data)], capture_output=True, timeout=120)

    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("agentgraph: error: ") and error in line
    assert not data.exists(), "nothing was loaded or created"


# --- the example graph and its command line ------------------------------------------------------------------

KNOWLEDGE_QUESTIONS = [
    "which payment methods can I use?", "what is your refund policy?", "what delivery options do you have?",
    "is there a fee for cancelling?", "how do I create an account?", "I forgot my password",
    "how do I subscribe to the newsletter?", "how can I contact customer service?",
]  # fmt: skip


@pytest.fixture
def example(embedded_slm, tmp_path):
    """The example graph on a durable checkpointer in ``tmp_path``: the files ``agentgraph run --data-dir`` uses."""
    from agentgraph.graphs.customer_support import STATE_SCHEMAS, CustomerSupportParts, compose

    parts = CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm)
    checkpointer = sqlite_checkpointer(parts.checkpoints_path, *STATE_SCHEMAS)
    return parts, checkpointer, compose(parts, checkpointer=checkpointer)


@pytest.mark.slow
def test_concurrent_turns_on_one_thread_of_the_example_keep_every_turn(example):
    parts, checkpointer, graph = example

    results = run_at_once([("shared", question) for question in KNOWLEDGE_QUESTIONS], graph, wait_s=600)

    assert all(result.route == "knowledge" for result in results), results
    decisions = graph.get_state({"configurable": {"thread_id": "shared"}}).values["decisions"]
    assert sorted(d.input for d in decisions if d.kind == "route") == sorted(KNOWLEDGE_QUESTIONS)
    assert forks(checkpointer, "shared") == [], "one line of checkpoints"


def start_cli(arguments: tuple[str, ...], data_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *arguments, "--data-dir", str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.mark.slow
def test_the_cli_refuses_resumes_that_answer_nothing_and_busy_threads_with_one_clear_line(example, tmp_path):
    parts, _, graph = example
    for thread in ("pending", "settled"):
        paused = run_turn(graph, "I need a refund of $20 for order 10001", thread_id=thread)
        assert paused.interrupt["action_requests"][0]["name"] == "issue_refund"
    run_turn(graph, resume={"decisions": [{"type": "reject"}]}, thread_id="settled")
    approve, bogus = '{"decisions": [{"type": "approve"}]}', '{"decisions": [{"type": "bogus"}]}'
    refused = {
        ("--thread", "pending", "--resume", bogus): "the resume value was refused: ",
        ("--thread", "pending", "--resume", bogus, "--json"): "the resume value was refused: ",
        ("--thread", "settled", "--resume", approve): "thread 'settled' has no pending approval to answer",
        ("--thread", "nope", "--resume", approve): f"no thread 'nope' in {tmp_path / 'checkpoints.db'}: ",
        ("which payment methods can I use?", "--thread", "busy", "--wait", "1"):
            f"thread 'busy' is busy: another turn on it (in another process using {tmp_path / 'locks'}) "
            "did not finish within 1 s",
    }  # fmt: skip
    chat = ("--interactive", "--thread", "chat")

    with hold_thread("busy", lock_dir=tmp_path / "locks"):
        commands = {arguments: start_cli(arguments, tmp_path) for arguments in [*refused, chat]}
        # The chat gets a line that is not UTF-8, then its input ends.
        finished = {
            arguments: (*command.communicate(b"\xff\xfe\n" if arguments == chat else b"", timeout=900), command.returncode)
            for arguments, command in commands.items()
        }  # fmt: skip

    for arguments, expected in refused.items():
        out, err, returncode = finished[arguments]
        assert returncode == 2 and b"Traceback" not in err, (arguments, err)
        assert err.decode().splitlines()[-1].startswith(f"agentgraph: error: {expected}"), (arguments, err)
        assert out == b"", "a refused turn prints no result"
    out, err, returncode = finished[chat]
    assert returncode == 0 and b"Traceback" not in err, err
    assert "agentgraph: error: the message is not valid text: character 0 is a lone surrogate" in err.decode()
    assert graph.get_state({"configurable": {"thread_id": "pending"}}).interrupts, "the approval is still pending"
    assert parts.shop.count_writes("issue_refund") == 0


if __name__ == "__main__":  # the worker of the cross-process tests: FOLDER THREAD WORKER TURNS [WAIT_S]
    folder, thread, worker, turns = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    wait_s = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    graph = chat_graph(sqlite_checkpointer(folder / "checkpoints.db"))
    for n in range(turns):
        try:
            run_turn(graph, f"worker {worker} message {n}", thread_id=thread, lock_dir=folder / "locks", wait_s=wait_s)
        except ThreadBusyError as exc:
            sys.exit(str(exc))
