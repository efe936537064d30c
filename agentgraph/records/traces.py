"""The trace store: every frontier-LLM call a graph makes, with its outcome, beside every SLM decision.

:class:`LLMCallRecorder` is a langchain-core callback handler: pass it in a
run's config (``graph.invoke(inputs, config={"callbacks": [recorder]})``) and
each chat-model call anywhere in the graph is written to a trace store
(:class:`SQLiteTraceStore`, or :class:`PostgresTraceStore` for workers that
share one database; :func:`open_trace_store` takes either a file or a
``postgresql://`` URL) as an :class:`LLMCall`: the prompt (messages in
OpenAI format), the output (text and tool calls), the node (LangGraph's
``langgraph_node`` metadata), the step type, latency, token counts, model and
thread.

The step type (``route``, ``extract``, ``plan``, ``escalate``, ...) says what a
call was for, and so what a distilled model could learn from it. It is taken,
first match wins, from the call's metadata key ``agentgraph_step_type``, a tag
``step:<type>`` (``llm.with_config(tags=["step:route"])``), the recorder's
``step_types`` (node name to step type) or its ``default_step_type``.

The tier (``efficient``, ``frontier``, ``reasoning``: see :mod:`agentgraph.tiers`) says which
model class answered; it is taken from the metadata key ``agentgraph_tier``, which a tier's
model carries on every run it makes, and is None for a call made outside the tiers.

A call's outcome comes later, from whoever can judge it (the customer, a
reviewer, a check): :meth:`SQLTraceStore.mark` sets ``accepted`` to True or
False by call id; until then it is None and the call is no training data. A
call that failed is stored as rejected, with its error. A call is stored with the
personal data in its prompt, answer and metadata masked (see
:func:`agentgraph.records.decisions.stored_record`): training data never holds a card number.

SLM decisions stay in the decision log (:mod:`agentgraph.records.decisions`). The store
is a :class:`~agentgraph.records.decisions.DecisionLog` itself, by default kept in the
same SQLite file or PostgreSQL database, so one ``--traces`` path or URL holds
both: give the store to nodes as their ``decision_log``, or give it another log
to read from.

Example:
    >>> from langchain_core.language_models import FakeListChatModel
    >>> from agentgraph.records.traces import LLMCallRecorder, SQLiteTraceStore
    >>> store = SQLiteTraceStore(":memory:")
    >>> llm = FakeListChatModel(responses=["track_order"])
    >>> _ = llm.invoke("where is my parcel?", config={"callbacks": [LLMCallRecorder(store)], "tags": ["step:route"]})
    >>> call = next(store.calls())
    >>> call.step_type, call.messages, call.output, call.accepted
    ('route', [{'role': 'user', 'content': 'where is my parcel?'}], 'track_order', None)
    >>> store.mark(call.id, accepted=True).accepted
    True
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, Field

from agentgraph.errors import AgentGraphError
from agentgraph.postgres import PostgresDialect, is_postgres_url
from agentgraph.records.decisions import (
    Decision,
    DecisionLog,
    PostgresDecisionLog,
    SQLiteDecisionLog,
    SQLStore,
    stored_record,
    where_clause,
)
from agentgraph.storage import connect_sqlite

STEP_TYPE_KEY = "agentgraph_step_type"
"""Run-config metadata key that names a call's step type."""
STEP_TAG_PREFIX = "step:"
"""A run tag ``step:<type>`` names a call's step type when the metadata does not."""
TIER_KEY = "agentgraph_tier"
"""Run metadata key that names the LLM tier (efficient, frontier, reasoning) a call was made on."""
REQUEST_TEXT_KEY = "agentgraph_request_text"
"""Run-config metadata key: the request a node's prompt wraps (the schema enforcer fences it), or None when the
prompt also holds context; a distillation example's input is this request rather than the message around it."""


class TraceNotFoundError(AgentGraphError, KeyError):
    """No call with the given id is in the store."""

    def __init__(self, call_id: str, path: str) -> None:
        super().__init__(f"no LLM call {call_id!r} in the trace store {path}; list the ids with the store's calls()")
        self.call_id = call_id

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class LLMCall(BaseModel):
    """One frontier-LLM call: what it was asked, what it answered, where, for what, at what cost, and how it went."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="the callback run id (hex) when recorded")
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC), description="when the call started")
    node: str | None = Field(default=None, description="the LangGraph node that made the call")
    step_type: str | None = Field(
        default=None, description="what the call was for: route, extract, plan, escalate, ..."
    )
    messages: list[dict[str, Any]] = Field(description="the prompt, as OpenAI-format chat messages")
    output: str | None = Field(default=None, description="the answer's text")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, description="the answer's tool calls: name and args")
    error: str | None = Field(default=None, description="why the call failed, if it did")
    tier: str | None = Field(
        default=None, description="the LLM tier that answered: efficient, frontier, reasoning (None: no tier)"
    )
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    thread_id: str | None = None
    accepted: bool | None = Field(
        default=None, description="the outcome: True accepted, False rejected, None not known yet"
    )
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict, description="the run's metadata, JSON-safe values only")

    @property
    def input_text(self) -> str | None:
        """What the request was, without the instructions around it.

        The request the node recorded under :data:`REQUEST_TEXT_KEY` (None when its prompt also held
        context, which no request alone reproduces), else the text of the last user message.
        """
        if REQUEST_TEXT_KEY in self.metadata:
            return self.metadata[REQUEST_TEXT_KEY]
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return None


def message_text(message: Mapping[str, Any]) -> str:
    """The text of an OpenAI-format message, its text parts joined when its content is a list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = [part.get("text", "") for part in content or [] if isinstance(part, Mapping) and part.get("type") == "text"]
    return "\n".join(parts)


class SQLTraceStore(SQLStore):
    """LLM calls in a SQL table; SLM decisions through a :class:`~agentgraph.records.decisions.DecisionLog`.

    One implementation for both backends (:class:`SQLiteTraceStore`, :class:`PostgresTraceStore`),
    which supply the connection and the decision log (by default one in the same database). Safe
    across threads and processes.
    """

    # ``accepted`` lives in its own column (NULL: no outcome yet) and never in ``record``, so marking
    # a call is one UPDATE and there is one source of truth for it.
    _schema = (
        "CREATE TABLE IF NOT EXISTS llm_calls ("
        " id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, node TEXT, step_type TEXT, thread_id TEXT,"
        " accepted INTEGER, record TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS llm_calls_step ON llm_calls (step_type, timestamp)",
        "CREATE INDEX IF NOT EXISTS llm_calls_thread ON llm_calls (thread_id)",
    )

    def __init__(self, connection: Any, path: str, *, decision_log: DecisionLog) -> None:
        super().__init__(connection, path)
        self.decision_log = decision_log

    def record_call(self, call: LLMCall) -> LLMCall:
        """Store ``call``, its personal data masked (a call already stored under its id is replaced); returns it."""
        with self._connection() as execute:
            execute(
                "INSERT INTO llm_calls (id, timestamp, node, step_type, thread_id, accepted, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET timestamp = excluded.timestamp,"
                " node = excluded.node, step_type = excluded.step_type, thread_id = excluded.thread_id,"
                " accepted = excluded.accepted, record = excluded.record",
                (call.id, call.timestamp.isoformat(), call.node, call.step_type, call.thread_id,
                 None if call.accepted is None else int(call.accepted), stored_record(call, exclude={"accepted"})),
            )  # fmt: skip
        return call

    def calls(
        self,
        *,
        node: str | None = None,
        step_type: str | None = None,
        thread_id: str | None = None,
        pending: bool | None = None,
    ) -> Iterator[LLMCall]:
        """Stored calls in the order they started, filtered by node, step type, thread and (``pending``) outcome."""
        where, params = where_clause(node=node, step_type=step_type, thread_id=thread_id)
        if pending is not None:
            outcome = "accepted IS NULL" if pending else "accepted IS NOT NULL"
            where = f"{where} AND {outcome}" if where else f" WHERE {outcome}"
        with self._connection() as execute:
            rows = execute(f"SELECT accepted, record FROM llm_calls{where} ORDER BY timestamp, id", params).fetchall()
        for row in rows:
            yield _stored_call(*row)

    def get(self, call_id: str) -> LLMCall:
        """The call stored under ``call_id``; :class:`TraceNotFoundError` when there is none."""
        with self._connection() as execute:
            row = execute("SELECT accepted, record FROM llm_calls WHERE id = ?", (call_id,)).fetchone()
        if row is None:
            raise TraceNotFoundError(call_id, self.path)
        return _stored_call(*row)

    def mark(self, call_id: str, *, accepted: bool | None) -> LLMCall:
        """Set the outcome of one call (None: back to no outcome); returns the updated call."""
        with self._connection() as execute:
            updated = execute(
                "UPDATE llm_calls SET accepted = ? WHERE id = ?", (None if accepted is None else int(accepted), call_id)
            ).rowcount
        if not updated:
            raise TraceNotFoundError(call_id, self.path)
        return self.get(call_id)

    def mark_thread(self, thread_id: str, *, accepted: bool, node: str | None = None) -> int:
        """Set the outcome of every call of a thread (optionally of one node) that has none yet; returns how many.

        Calls already judged keep their outcome: a later verdict on the whole
        conversation should not overturn one given on a single answer.
        """
        where, params = where_clause(thread_id=thread_id, node=node)
        with self._connection() as execute:
            return execute(
                f"UPDATE llm_calls SET accepted = ?{where} AND accepted IS NULL", (int(accepted), *params)
            ).rowcount

    # The DecisionLog protocol, so nodes can be given the store as their decision_log.
    def record(self, decision: Decision) -> None:
        self.decision_log.record(decision)

    def decisions(self, *, node: str | None = None, kind: str | None = None) -> Iterator[Decision]:
        return self.decision_log.decisions(node=node, kind=kind)

    def close(self) -> None:
        super().close()
        close = getattr(self.decision_log, "close", None)
        if close is not None:
            close()


def _stored_call(accepted: int | None, record: str) -> LLMCall:
    return LLMCall.model_validate_json(record).model_copy(
        update={"accepted": None if accepted is None else bool(accepted)}
    )


class SQLiteTraceStore(SQLTraceStore):
    """The trace store in a SQLite file (``":memory:"`` for a throwaway store).

    Args:
        path: the SQLite file.
        decision_log: where decisions are written and read; default a
            :class:`~agentgraph.records.decisions.SQLiteDecisionLog` on the same file.
    """

    def __init__(self, path: str | Path, *, decision_log: DecisionLog | None = None) -> None:
        super().__init__(
            connect_sqlite(path),
            str(path),
            decision_log=decision_log if decision_log is not None else SQLiteDecisionLog(path),
        )


class PostgresTraceStore(PostgresDialect, SQLTraceStore):
    """The trace store in a PostgreSQL database (psycopg 3), shared by workers on many hosts.

    Args:
        url: the database, ``postgresql://user@host/db``.
        decision_log: default a :class:`~agentgraph.records.decisions.PostgresDecisionLog` in the same database.
    """

    def __init__(self, url: str, *, decision_log: DecisionLog | None = None) -> None:
        super().__init__(url, decision_log=decision_log if decision_log is not None else PostgresDecisionLog(url))


def open_trace_store(location: str | Path, *, decision_log: DecisionLog | None = None) -> SQLTraceStore:
    """The trace store at ``location``: a ``postgresql://`` URL (:class:`PostgresTraceStore`) or a SQLite file."""
    if is_postgres_url(location):
        return PostgresTraceStore(str(location), decision_log=decision_log)
    return SQLiteTraceStore(location, decision_log=decision_log)


class LLMCallRecorder(BaseCallbackHandler):
    """Writes every chat-model (and completion-model) call of a run to a trace store.

    Args:
        store: where the calls go.
        step_types: node name to step type, for calls whose run names none.
        default_step_type: the step type of a call nothing else names one for.

    Use it as ``graph.invoke(inputs, config={"callbacks": [recorder]})``; it
    follows the run into every node, subgraph and model call. Calls are keyed by
    their run id, which becomes the stored call's id.
    """

    def __init__(
        self,
        store: SQLTraceStore,
        *,
        step_types: Mapping[str, str] | None = None,
        default_step_type: str | None = None,
    ) -> None:
        self.store = store
        self.step_types = dict(step_types or {})
        self.default_step_type = default_step_type
        self._pending: dict[UUID, tuple[LLMCall, float]] = {}  # run id -> (call so far, perf_counter at start)
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # One run is one prompt: langchain-core starts a run per prompt of a batch.
        self._start(run_id, convert_to_openai_messages(messages[0]), tags, metadata, kwargs.get("invocation_params"))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(
            run_id,
            convert_to_openai_messages([HumanMessage(prompts[0])]),
            tags,
            metadata,
            kwargs.get("invocation_params"),
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        pending = self._finish(run_id)
        if pending is None:
            return
        call, started = pending
        generation, message = _first_generation(response)
        model, prompt_tokens, completion_tokens = usage_of(response)
        update: dict[str, Any] = {
            "output": None if generation is None else str(message.text) if message is not None else generation.text,
            "tool_calls": [
                {"name": call["name"], "args": call["args"]} for call in getattr(message, "tool_calls", None) or []
            ],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": (time.perf_counter() - started) * 1000,
        }
        if model:
            update["model"] = model
        self.store.record_call(call.model_copy(update=update))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        pending = self._finish(run_id)
        if pending is None:
            return
        call, started = pending
        # A failed call has no answer to learn from: it is rejected now rather than left waiting for an outcome.
        self.store.record_call(
            call.model_copy(
                update={
                    "error": f"{type(error).__name__}: {error}",
                    "accepted": False,
                    "latency_ms": (time.perf_counter() - started) * 1000,
                }
            )
        )

    def step_type_of(self, node: str | None, tags: Sequence[str], metadata: Mapping[str, Any]) -> str | None:
        """The step type of a call: metadata, then a ``step:`` tag, then the node's mapping, then the default."""
        if metadata.get(STEP_TYPE_KEY):
            return str(metadata[STEP_TYPE_KEY])
        tagged = [tag[len(STEP_TAG_PREFIX) :] for tag in tags if tag.startswith(STEP_TAG_PREFIX)]
        if tagged:
            # Tags accumulate from the outside in; the innermost (last) one is the most specific.
            return tagged[-1]
        return self.step_types.get(node or "", self.default_step_type)

    def _start(
        self,
        run_id: UUID,
        messages: list[dict[str, Any]],
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> None:
        metadata = metadata or {}
        tags = list(tags or [])
        node = metadata.get("langgraph_node")
        params = invocation_params or {}
        call = LLMCall(
            id=run_id.hex,
            node=node,
            step_type=self.step_type_of(node, tags, metadata),
            tier=metadata.get(TIER_KEY),
            messages=messages,
            model=metadata.get("ls_model_name") or params.get("model") or params.get("model_name"),
            thread_id=metadata.get("thread_id"),
            tags=tags,
            metadata={key: value for key, value in metadata.items() if _json_safe(value)},
        )
        with self._lock:
            self._pending[run_id] = (call, time.perf_counter())

    def _finish(self, run_id: UUID) -> tuple[LLMCall, float] | None:
        with self._lock:
            return self._pending.pop(run_id, None)


def _first_generation(response: LLMResult) -> tuple[Any, AIMessage | None]:
    generation = response.generations[0][0] if response.generations and response.generations[0] else None
    message = generation.message if isinstance(generation, ChatGeneration) else None
    return generation, message if isinstance(message, AIMessage) else None


def usage_of(response: LLMResult) -> tuple[str | None, int | None, int | None]:
    """The model an LLM call reports, and its prompt and completion tokens (None where it reports none)."""
    _, message = _first_generation(response)
    usage: Mapping[str, Any] = (message.usage_metadata if message is not None else None) or {}
    llm_output = response.llm_output or {}
    token_usage = llm_output.get("token_usage") or {}
    model = (message.response_metadata.get("model_name") if message is not None else None) or llm_output.get(
        "model_name"
    )
    return (
        model,
        usage.get("input_tokens", token_usage.get("prompt_tokens")),
        usage.get("output_tokens", token_usage.get("completion_tokens")),
    )


def _json_safe(value: Any) -> bool:
    """Whether a metadata value stores as JSON as it is (LangGraph adds tuples and versions; those are kept too)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_json_safe(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _json_safe(item) for key, item in value.items())
    return False
