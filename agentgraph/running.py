"""Run one turn of a graph built from agentgraph nodes and report what happened.

:func:`run_turn` streams a compiled graph (a new message, or the answer to a
pending approval) and returns a :class:`TurnResult`: the route and its
confidence, the nodes visited in order, how many frontier-LLM calls and
small-model decisions the turn took, the response, a pending approval (the
``interrupt`` payload) and the latency. The CLI prints it; the benchmarks
aggregate it.

Example:
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from langgraph.graph import START, StateGraph
    >>> from agentgraph.running import run_turn
    >>> from typing import TypedDict
    >>> class State(TypedDict, total=False):
    ...     text: str
    ...     response: str
    >>> builder = StateGraph(State)
    >>> _ = builder.add_node("echo", lambda state: {"response": state["text"].upper()}).add_edge(START, "echo")
    >>> turn = run_turn(builder.compile(checkpointer=InMemorySaver()), "hello", thread_id="t1")
    >>> turn.nodes, turn.response, turn.llm_calls
    (['echo'], 'HELLO', 0)

Turns on one thread run one at a time: two at once would both start from the
same checkpoint, and the thread's history would fork and lose one of them.
:func:`run_turn` holds a lock per thread in this process, and with
``lock_dir`` a lock file per thread there, so processes sharing the folder
(``agentgraph run --data-dir``) queue up too. Workers on several machines
share no folder: with ``database_url`` the turn holds a PostgreSQL advisory
lock on a hash of the thread id instead, in the database they share
(``agentgraph run --database-url``); the server drops it when the worker's
connection ends, a killed worker's included. A turn that waits longer than
``wait_s`` ends in :class:`~agentgraph.errors.ThreadBusyError`.

Bad input is a typed error before anything runs: a message that is not a str
or not valid UTF-8 (:class:`~agentgraph.errors.InvalidTextError`), a resume
value for a thread that does not exist (:class:`~agentgraph.errors.UnknownThreadError`)
or has no pending interrupt (:class:`~agentgraph.errors.NothingToResumeError`),
and, after it ran, a resume value the pending approval refused
(:class:`~agentgraph.errors.ApprovalResponseError`; the approval stays pending).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from pydantic import BaseModel, Field

from agentgraph.checkpointing import checkpoint_location
from agentgraph.errors import (
    ApprovalResponseError,
    NothingToResumeError,
    ThreadBusyError,
    TurnInputError,
    UnknownThreadError,
)
from agentgraph.records.decisions import Decision
from agentgraph.records.traces import usage_of
from agentgraph.text import require_utf8

SMALL_MODEL_STRATEGIES = frozenset({"classifier", "slm", "slm_repair", "cross_encoder"})
"""Decision strategies that mean a local small model (SLM, classifier or cross-encoder) decided."""


class LLMTokens(BaseModel):
    """The tokens one model's calls took in a turn."""

    prompt: int = 0
    completion: int = 0


class LLMCallCounter(BaseCallbackHandler):
    """Counts chat-model and LLM starts (every frontier-LLM call a graph run makes, wherever in the graph),
    adds up the tokens each model reports and the time the calls took, start to end."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokens: dict[str, LLMTokens] = {}
        self.llm_ms = 0.0
        self._started: dict[uuid.UUID, float] = {}

    def on_llm_end(self, response: LLMResult, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._ended(run_id)
        model, prompt, completion = usage_of(response)
        used = self.tokens.setdefault(model or "unknown", LLMTokens())
        used.prompt += prompt or 0
        used.completion += completion or 0

    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._ended(run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._start(run_id)

    def _start(self, run_id: uuid.UUID) -> None:
        self.calls += 1
        self._started[run_id] = time.perf_counter()

    def _ended(self, run_id: uuid.UUID) -> None:
        started = self._started.pop(run_id, None)
        if started is not None:
            self.llm_ms += (time.perf_counter() - started) * 1000


class TurnResult(BaseModel):
    """What one turn did (the CLI's ``--json`` output)."""

    thread_id: str
    route: str | None = None
    intent: str | None = None
    confidence: float | None = None
    nodes: list[str] = Field(description="nodes that ran this turn, in order")
    llm_calls: int = Field(description="frontier-LLM calls this turn")
    llm_tokens: dict[str, LLMTokens] = Field(default_factory=dict, description="the tokens they took, per model")
    slm_calls: int = Field(description="decisions a local small model made this turn (SLM, classifier, cross-encoder)")
    response: str | None = Field(description="the reply; None while an approval is pending")
    interrupt: dict[str, Any] | None = Field(description="the pending approval request, if the turn paused for one")
    latency_ms: float
    llm_ms: float = Field(
        default=0.0, description="of latency_ms, the time the frontier LLM's calls took (summed, start to end)"
    )
    decisions: list[Decision] = Field(default_factory=list, exclude=True)


DEFAULT_TURN_WAIT_S = 120.0
"""How long a turn waits for another turn on its thread to finish before it gives up."""


def run_turn(
    graph: CompiledStateGraph,
    message: str | None = None,
    *,
    resume: Any = None,
    thread_id: str | None = None,
    inputs: Mapping[str, str | None] | None = None,
    input_key: str = "text",
    response_key: str = "response",
    callbacks: list[BaseCallbackHandler] | None = None,
    metadata: dict[str, Any] | None = None,
    lock_dir: str | Path | None = None,
    database_url: str | None = None,
    wait_s: float = DEFAULT_TURN_WAIT_S,
) -> TurnResult:
    """Send ``message`` (or, with ``resume``, answer the pending interrupt) on ``thread_id`` and report.

    The graph needs a checkpointer for ``resume`` and for a thread to carry over turns.
    The message goes into the state under ``input_key`` (the router's ``text``), beside ``inputs``, the
    graph's own further input keys (``{"customer_id": "C1001"}``, say; one without a value is left out);
    the response is read from ``response_key`` once the turn ends. The route, intent and confidence are
    the router's keys (:class:`~agentgraph.nodes.router.RouterState`), when the graph has a router.
    ``callbacks`` (a Langfuse handler, say) and ``metadata`` go into the run's config.
    The turn holds its thread (see the module docstring): in this process always, across
    processes through a lock file in ``lock_dir`` when given, and across machines through an
    advisory lock in the PostgreSQL database ``database_url`` when given; it waits up to
    ``wait_s`` seconds for a turn already on the thread.
    """
    graph_input = _turn_input(message, resume, input_key, inputs)
    thread_id = uuid.uuid4().hex if thread_id in (None, "") else require_utf8(thread_id, what="thread id")
    counter = LLMCallCounter()
    config: RunnableConfig = {
        "configurable": {"thread_id": thread_id},
        "callbacks": [counter, *(callbacks or [])],
        "metadata": metadata or {},
    }
    with hold_thread(thread_id, lock_dir=lock_dir, database_url=database_url, wait_s=wait_s):
        if resume is not None:
            check_resumable(graph, config)
        result = _stream_turn(graph, graph_input, config, counter, response_key)
    if resume is not None and result.interrupt is not None and "error" in result.interrupt:
        # The node asked again because the answer did not fit: the caller's resume value was wrong.
        refusal = " ".join(str(result.interrupt["error"]).split())
        raise ApprovalResponseError(
            f"the resume value was refused: {refusal}. The approval is still pending on thread {thread_id!r}: "
            "answer it again with one decision per action request"
        )
    return result


def _turn_input(message: Any, resume: Any, input_key: str, inputs: Mapping[str, str | None] | None) -> Any:
    """What the graph is given for a turn: the resume command, or the new message (and the other input keys)."""
    if (message is None) == (resume is None):
        raise TurnInputError("give a message or a resume value, not both or neither")
    if resume is not None:
        return Command(resume=resume)
    graph_input = {input_key: require_utf8(message, what="message")}
    for key, value in (inputs or {}).items():
        if value:
            graph_input[key] = require_utf8(value, what=key.replace("_", " "))
    return graph_input


def check_resumable(graph: CompiledStateGraph, config: RunnableConfig) -> None:
    """Raise unless the thread in ``config`` has an interrupt waiting for an answer."""
    thread_id = config["configurable"]["thread_id"]
    if not isinstance(graph.checkpointer, BaseCheckpointSaver):
        raise TurnInputError(
            "a resume answers an interrupt kept in a checkpoint: compile the graph with a checkpointer"
        )
    snapshot = graph.get_state(config)
    if snapshot.created_at is None:
        raise UnknownThreadError(thread_id, checkpoint_location(graph.checkpointer))
    if not snapshot.interrupts:
        raise NothingToResumeError(thread_id)


def _stream_turn(
    graph: CompiledStateGraph, graph_input: Any, config: RunnableConfig, counter: LLMCallCounter, response_key: str
) -> TurnResult:
    started = time.perf_counter()
    nodes: list[str] = []
    decisions: list[Decision] = []
    pending: dict[str, Any] | None = None
    for update in graph.stream(graph_input, config, stream_mode="updates"):
        for node, values in update.items():
            if node == "__interrupt__":
                pending = {"id": values[0].id, **values[0].value}
                continue
            nodes.append(node)
            decisions.extend((values or {}).get("decisions", []) if isinstance(values, dict) else [])
    latency_ms = (time.perf_counter() - started) * 1000
    state = graph.get_state(config).values
    return TurnResult(
        thread_id=config["configurable"]["thread_id"],
        route=state.get("route"),
        intent=state.get("intent"),
        confidence=state.get("route_confidence"),
        nodes=nodes,
        llm_calls=counter.calls,
        llm_tokens=counter.tokens,
        llm_ms=counter.llm_ms,
        slm_calls=sum(decision.strategy in SMALL_MODEL_STRATEGIES for decision in decisions),
        response=None if pending else state.get(response_key),
        interrupt=pending,
        latency_ms=latency_ms,
        decisions=decisions,
    )


@contextmanager
def hold_thread(
    thread_id: str,
    *,
    lock_dir: str | Path | None = None,
    database_url: str | None = None,
    wait_s: float = DEFAULT_TURN_WAIT_S,
) -> Iterator[None]:
    """Hold ``thread_id`` for one turn: against this process's other turns, with ``lock_dir`` other processes'
    on this machine, and with ``database_url`` those of every worker on that PostgreSQL database.

    Raises :class:`~agentgraph.errors.ThreadBusyError` when the thread is not free within ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    with ExitStack() as held:
        if not _THREAD_LOCKS.acquire(thread_id, deadline):
            raise ThreadBusyError(thread_id, wait_s, "in this process")
        held.callback(_THREAD_LOCKS.release, thread_id)
        if lock_dir is not None:
            held.enter_context(_thread_lock_file(Path(lock_dir), thread_id, wait_s, deadline))
        if database_url is not None:
            held.enter_context(_ADVISORY_LOCKS.hold(database_url, thread_id, wait_s, deadline))
        yield


class _ThreadLocks:
    """This process's lock per thread id; an entry lives only while a turn holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, int]] = {}  # thread id -> (lock, turns holding or waiting)

    def acquire(self, thread_id: str, deadline: float) -> bool:
        with self._guard:
            lock, users = self._entries.get(thread_id, (threading.Lock(), 0))
            self._entries[thread_id] = (lock, users + 1)
        if lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            return True
        self._leave(thread_id)
        return False

    def release(self, thread_id: str) -> None:
        with self._guard:
            lock, _ = self._entries[thread_id]
        lock.release()
        self._leave(thread_id)

    def _leave(self, thread_id: str) -> None:
        with self._guard:
            lock, users = self._entries[thread_id]
            if users == 1:
                del self._entries[thread_id]
            else:
                self._entries[thread_id] = (lock, users - 1)


_THREAD_LOCKS = _ThreadLocks()

_LOCK_POLL_S = 0.05


@contextmanager
def _thread_lock_file(lock_dir: Path, thread_id: str, wait_s: float, deadline: float) -> Iterator[None]:
    """An exclusive ``flock`` on the thread's lock file; the kernel drops it when its process dies."""
    import fcntl  # POSIX only; imported here so the rest of the module works everywhere

    lock_dir.mkdir(parents=True, exist_ok=True)
    # Hashed: a thread id may hold any character, and personal data too.
    path = lock_dir / f"{hashlib.sha256(thread_id.encode()).hexdigest()[:32]}.lock"
    with path.open("ab") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ThreadBusyError(thread_id, wait_s, f"in another process using {lock_dir}") from None
                time.sleep(_LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _AdvisoryLocks:
    """Session advisory locks on threads, on connections kept per database for the next turns.

    A session lock belongs to its connection: the server releases it when the connection ends, so
    a worker that dies (a SIGKILL closes its socket) frees its threads at once. A worker whose
    machine vanishes frees them once the server notices the connection is gone (its TCP keepalive
    settings decide when). For the same reason a connection lost in the middle of a turn loses the
    lock with it: the turn goes on, no longer guarded.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._idle: dict[str, list[Any]] = {}  # database URL -> connections holding no lock

    @contextmanager
    def hold(self, url: str, thread_id: str, wait_s: float, deadline: float) -> Iterator[None]:
        from agentgraph.postgres import advisory_key, describe_url

        key = advisory_key("thread", thread_id)
        connection = self._take(url)
        try:
            try:
                locked = _try_lock(connection, key)
            except Exception:  # a kept connection the server has closed since (a restart): once more, on a new one
                connection.close()
                connection = self._take(url, fresh=True)
                locked = _try_lock(connection, key)
            while not locked:
                if time.monotonic() >= deadline:
                    raise ThreadBusyError(thread_id, wait_s, f"on another worker of {describe_url(url)}")
                time.sleep(_LOCK_POLL_S)
                locked = _try_lock(connection, key)
        except BaseException:
            self._give_back(url, connection)
            raise
        try:
            yield
        finally:
            try:
                connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except Exception:  # the connection broke: the server has dropped its locks with it
                connection.close()
            else:
                self._give_back(url, connection)

    def _take(self, url: str, *, fresh: bool = False) -> Any:
        from agentgraph.postgres import connect

        with self._guard:
            idle = self._idle.get(url)
            if idle and not fresh:
                return idle.pop()
        return connect(url)

    def _give_back(self, url: str, connection: Any) -> None:
        if connection.closed or connection.broken:
            return
        with self._guard:
            self._idle.setdefault(url, []).append(connection)


def _try_lock(connection: Any, key: int) -> bool:
    return connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]


_ADVISORY_LOCKS = _AdvisoryLocks()
