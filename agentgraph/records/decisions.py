"""Decision records: what every node decided, on what input, how sure, and what came of it.

Each node returns its record under the ``decisions`` state key (append-only, see
:class:`DecisionState`) and, when given a :class:`DecisionLog`, writes it there
too. The log is the raw material of distillation: accepted decisions become
training data. So a log stores each record with its personal data masked
(:func:`stored_record`, :mod:`agentgraph.pii`): card numbers, e-mail addresses,
IBANs and the rest become ``[CARD_NUMBER]``, ``[EMAIL]``, ``[IBAN]``. The
record in graph state, which the run itself uses, keeps them.

Example:
    >>> from agentgraph.records.decisions import Decision, SQLiteDecisionLog
    >>> log = SQLiteDecisionLog(":memory:")
    >>> log.record(Decision(node="router", kind="route", input="where is my order?", output="track_order",
    ...                     confidence=0.97, strategy="classifier", latency_ms=3.1))
    >>> [d.output for d in log.decisions(node="router")]
    ['track_order']
    >>> log.record(Decision(node="router", kind="route", input="refund to DE89 3704 0044 0532 0130 00"))
    >>> [d.input for d in log.decisions(node="router")][-1]
    'refund to [IBAN]'
"""

from __future__ import annotations

import json
import operator
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from agentgraph.pii import redact_pii_in
from agentgraph.postgres import PostgresDialect
from agentgraph.storage import connect_sqlite


class Decision(BaseModel):
    """One decision of one node."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    node: str = Field(description="the node's name, e.g. 'router'")
    kind: str = Field(
        description="what was decided: route, extract, validate, prune, evaluate, classify_tool, llm_call, shadow"
    )
    input: Any = Field(description="what the decision was made on")
    output: Any = Field(default=None, description="the decision: a route, an object, a verdict")
    confidence: float | None = Field(default=None, description="calibrated where the node calibrates")
    strategy: str | None = Field(default=None, description="how: rules, classifier, slm, llm, human, ...")
    escalated: bool = False
    outcome: str | None = Field(default=None, description="what came of it: ok, escalated, handoff, repaired, ...")
    model: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int | None = Field(
        default=None, description="the small model's tokens read for this decision (an LLM call's are on its LLMCall)"
    )
    completion_tokens: int | None = Field(default=None, description="the small model's tokens written")
    thread_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class DecisionState(TypedDict, total=False):
    """Mix into a graph's state: nodes append their records here."""

    decisions: Annotated[list[Decision], operator.add]


IDENTITY_FIELDS = ("id", "timestamp", "thread_id")
"""Fields a stored record keeps as they are: what finds it again (a thread id is the caller's to choose)."""


def stored_record(record: BaseModel, *, exclude: set[str] | None = None) -> str:
    """``record`` as a store writes it: JSON, with the personal data in every field but its identity masked."""
    values = record.model_dump(mode="json", exclude=exclude)
    masked = {field: value if field in IDENTITY_FIELDS else redact_pii_in(value) for field, value in values.items()}
    return json.dumps(masked, ensure_ascii=False)


def thread_id_of(config: RunnableConfig | None) -> str | None:
    """The LangGraph thread id a node runs under, if any."""
    return ((config or {}).get("configurable") or {}).get("thread_id")


class DecisionLog(Protocol):
    """Where decisions are kept beyond the graph state."""

    def record(self, decision: Decision) -> None: ...

    def decisions(self, *, node: str | None = None, kind: str | None = None) -> Iterator[Decision]: ...


def log_decision(decision_log: DecisionLog | None, decision: Decision) -> Decision:
    """Write ``decision`` to ``decision_log`` when the node was given one; returns the decision."""
    if decision_log is not None:
        decision_log.record(decision)
    return decision


class JSONLDecisionLog:
    """Decisions appended one JSON object per line; safe across threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, decision: Decision) -> None:
        line = stored_record(decision) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    def decisions(self, *, node: str | None = None, kind: str | None = None) -> Iterator[Decision]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                decision = Decision.model_validate_json(line)
                if (node is None or decision.node == node) and (kind is None or decision.kind == kind):
                    yield decision


def where_clause(**filters: Any) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE column = ? AND ...`` for the filters that are not None (none: no clause), and their values."""
    given = {column: value for column, value in filters.items() if value is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column in given), tuple(given.values())


class SQLStore:
    """Tables over one connection, one SQL for SQLite and PostgreSQL; a backend supplies the connection.

    Queries are written with ``?`` placeholders, which :meth:`_sql` turns into the backend's own;
    :meth:`_connection` holds the connection for one thread at a time. ``path`` says where the
    store is: the SQLite file, or the PostgreSQL URL without its password.
    """

    _placeholder = "?"
    _schema: tuple[str, ...] = ()

    def __init__(self, connection: Any, path: str) -> None:
        self.path = path
        self._conn = connection
        self._lock = threading.Lock()
        self._create_tables(self._schema)

    def _create_tables(self, statements: Sequence[str]) -> None:
        for statement in statements:
            self._conn.execute(statement)

    def _sql(self, query: str) -> str:
        return query.replace("?", self._placeholder)

    @contextmanager
    def _connection(self) -> Iterator[Callable[[str, Sequence[Any]], Any]]:
        """The connection, held by this thread for the block; yields ``execute(sql, params) -> cursor``."""

        def execute(query: str, params: Sequence[Any] = ()) -> Any:
            return self._conn.execute(self._sql(query), params)

        with self._lock:
            yield execute

    def close(self) -> None:
        self._conn.close()


class SQLDecisionLog(SQLStore):
    """The decision log's table and queries; :class:`SQLiteDecisionLog` and :class:`PostgresDecisionLog` connect."""

    _schema = (
        "CREATE TABLE IF NOT EXISTS decisions ("
        " id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL,"
        " thread_id TEXT, record TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS decisions_node_kind ON decisions (node, kind, timestamp)",
    )

    def record(self, decision: Decision) -> None:
        with self._connection() as execute:
            execute(
                "INSERT INTO decisions (id, timestamp, node, kind, thread_id, record) VALUES (?, ?, ?, ?, ?, ?)",
                (decision.id, decision.timestamp.isoformat(), decision.node, decision.kind, decision.thread_id,
                 stored_record(decision)),
            )  # fmt: skip

    def decisions(self, *, node: str | None = None, kind: str | None = None) -> Iterator[Decision]:
        where, params = where_clause(node=node, kind=kind)
        with self._connection() as execute:
            rows = execute(f"SELECT record FROM decisions{where} ORDER BY timestamp", params).fetchall()
        for (record,) in rows:
            yield Decision.model_validate_json(record)


class SQLiteDecisionLog(SQLDecisionLog):
    """Decisions in a SQLite table, queryable by node and kind; safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(connect_sqlite(path), str(path))


class PostgresDecisionLog(PostgresDialect, SQLDecisionLog):
    """Decisions in a PostgreSQL table (psycopg 3): one log for many workers on many hosts.

    Example (needs a server)::

        log = PostgresDecisionLog("postgresql://agent@db/agent")
    """


def open_decision_log(path: str | Path) -> DecisionLog:
    """A log by name: a ``postgresql://`` URL is PostgreSQL, a ``.jsonl`` file JSON lines, any other file SQLite."""
    from agentgraph.postgres import is_postgres_url

    if is_postgres_url(path):
        return PostgresDecisionLog(str(path))
    return JSONLDecisionLog(path) if str(path).endswith(".jsonl") else SQLiteDecisionLog(path)
