"""Decision records: what every node decided, on what input, how sure, and what came of it.

Each node returns its record under the ``decisions`` state key (append-only, see
:class:`DecisionState`) and, when given a :class:`DecisionLog`, writes it there
too. The log is the raw material of distillation: accepted decisions become
training data. So a log stores each record with its personal data masked
(:func:`stored_record`, :mod:`agentgraph.pii`): card numbers, e-mail addresses,
IBANs and the rest become ``[CARD_NUMBER]``, ``[EMAIL]``, ``[IBAN]``. The
record in graph state, which the run itself uses, keeps them.

Example:
    >>> from agentgraph.decisions import Decision, SQLiteDecisionLog
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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from agentgraph.pii import redact_pii_in
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


class SQLiteDecisionLog:
    """Decisions in a SQLite table, queryable by node and kind; safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn = connect_sqlite(self.path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS decisions ("
            " id TEXT PRIMARY KEY, timestamp TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL,"
            " thread_id TEXT, record TEXT NOT NULL)"
        )
        self._conn.execute("CREATE INDEX IF NOT EXISTS decisions_node_kind ON decisions (node, kind, timestamp)")
        self._lock = threading.Lock()

    def record(self, decision: Decision) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO decisions (id, timestamp, node, kind, thread_id, record) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.id,
                    decision.timestamp.isoformat(),
                    decision.node,
                    decision.kind,
                    decision.thread_id,
                    stored_record(decision),
                ),
            )

    def decisions(self, *, node: str | None = None, kind: str | None = None) -> Iterator[Decision]:
        query = "SELECT record FROM decisions WHERE (? IS NULL OR node = ?) AND (? IS NULL OR kind = ?) ORDER BY timestamp"
        with self._lock:
            rows = self._conn.execute(query, (node, node, kind, kind)).fetchall()
        for (record,) in rows:
            yield Decision.model_validate_json(record)

    def close(self) -> None:
        self._conn.close()


def open_decision_log(path: str | Path) -> DecisionLog:
    """A log by file name: ``.jsonl`` is JSON lines, anything else SQLite."""
    return JSONLDecisionLog(path) if str(path).endswith(".jsonl") else SQLiteDecisionLog(path)

