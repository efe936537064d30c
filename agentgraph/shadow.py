"""Shadow evaluation: a sample of the requests the SLM answered goes to the teacher too, and agreement is tracked.

A node given a :class:`ShadowEvaluator` hands it each decision a small model
made (the router's classifier, rules or SLM; the schema enforcer's SLM or its
repair). For a share ``rate`` of them, the evaluator asks the teacher (the
node's LLM) the same input on a background thread, so the request never waits
for it, and writes the comparison to the node's decision log as a decision of
kind ``shadow``::

    Decision(node=..., kind="shadow", input=<the student's input>,
             output={"student": ..., "teacher": ... or None, "agree": bool or None},
             confidence=<the student's>, strategy=<the student's>, model=<the teacher's>,
             outcome="agree" | "disagree" | "teacher_failed", thread_id=...,
             metadata={"student_model": ..., "shadow_of": <the student's decision id>})

Which requests are sampled depends only on the seed, the node and the input
(a hash), so a run is reproducible and a request is sampled or not wherever it
is routed. The teacher's calls go to the evaluator's ``callbacks`` (give it an
:class:`~agentgraph.records.traces.LLMCallRecorder` to keep them in the trace
store) with the metadata ``agentgraph_shadow: True`` and ``shadow_of``.
:func:`shadow_agreement` turns the log into agreement over time.

Example:
    >>> from agentgraph.records.decisions import Decision, SQLiteDecisionLog
    >>> from agentgraph.shadow import ShadowConfig, ShadowEvaluator, shadow_agreement
    >>> log = SQLiteDecisionLog(":memory:")
    >>> shadow = ShadowEvaluator(ShadowConfig(rate=1.0))
    >>> student = Decision(node="router", kind="route", input="where is my parcel?", confidence=0.93,
    ...                    strategy="classifier", model="all-MiniLM-L6-v2-int8")
    >>> _ = shadow.evaluate(student, "track_order", lambda config: "track_order", teacher_model="gpt-4o-mini",
    ...                     decision_log=log)
    >>> shadow.flush()
    >>> [(d.output, d.outcome) for d in log.decisions(kind="shadow")]
    [({'student': 'track_order', 'teacher': 'track_order', 'agree': True}, 'agree')]
    >>> [(n, agreement) for _, n, agreement in shadow_agreement(log.decisions(kind="shadow"))]
    [(1, 1.0)]
    >>> shadow.close()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field, ValidationError

from agentgraph.errors import ConfigError
from agentgraph.records.decisions import Decision, DecisionLog, log_decision

logger = logging.getLogger(__name__)

SHADOW_RATE_ENV = "AGENTGRAPH_SHADOW_RATE"
SHADOW_KEY = "agentgraph_shadow"
"""Run-config metadata key that marks a teacher call made for shadow evaluation."""
CANARY_KEY = "canary"
"""Decision metadata key of a request a canary candidate served, with its comparison to the current model
(:mod:`agentgraph.nodes.canary`): like a shadow check, a served answer set against another model's."""


def hashed_draw(*key: Any) -> float:
    """A number in [0, 1) that depends only on ``key`` (JSON of it, hashed): a reproducible sample draw."""
    text = json.dumps(list(key), sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


class ShadowConfig(BaseModel):
    """How many of the requests a small model answered are also sent to the teacher."""

    rate: float = Field(default=0.0, ge=0.0, le=1.0, description="the share of them sampled; 0 turns shadowing off")
    seed: int = Field(default=0, description="another seed samples other requests")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ShadowConfig:
        """The rate from ``AGENTGRAPH_SHADOW_RATE`` (unset: 0, no shadowing)."""
        rate = (os.environ if environ is None else environ).get(SHADOW_RATE_ENV, "").strip()
        return cls.checked(rate=rate or 0.0)

    @classmethod
    def checked(cls, **values: Any) -> ShadowConfig:
        """A config from settings, or a :class:`~agentgraph.errors.ConfigError` that says what is wrong."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"shadow evaluation: {problems} (the rate is a share between 0 and 1)") from exc


class ShadowEvaluator:
    """Sends a sample of small-model decisions to the teacher in the background and logs each comparison.

    Args:
        config: the sample rate and seed.
        callbacks: handlers for the teacher's calls (an ``LLMCallRecorder``, so they are traced).
        max_workers: teacher calls in flight at once.

    :meth:`flush` waits for the comparisons under way; :meth:`close` also stops the threads.
    """

    def __init__(
        self,
        config: ShadowConfig,
        *,
        callbacks: list[BaseCallbackHandler] | None = None,
        max_workers: int = 1,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks or [])
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agentgraph-shadow")
        self._pending: set[Future[Decision]] = set()
        self._lock = threading.Lock()

    def sampled(self, node: str, input: Any) -> bool:
        """Whether the request ``input`` to ``node`` is in the sample: a hash of seed, node and input below the rate."""
        return hashed_draw(self.config.seed, node, input) < self.config.rate

    def evaluate(
        self,
        student: Decision,
        answer: Any,
        ask_teacher: Callable[[RunnableConfig], Any],
        *,
        teacher_model: str,
        decision_log: DecisionLog | None,
    ) -> Future[Decision] | None:
        """Compare ``answer`` (the student's, as JSON) with the teacher's, when ``student``'s input is sampled.

        ``ask_teacher(config)`` returns the teacher's answer in the same shape,
        or raises; it runs on the evaluator's thread. Returns the future
        comparison, or None when the input is not sampled.
        """
        if not self.sampled(student.node, student.input):
            return None

        def compare() -> Decision:
            config: RunnableConfig = {
                "callbacks": self.callbacks,
                "run_name": f"{student.node}:shadow",
                "metadata": {SHADOW_KEY: True, "shadow_of": student.id, "thread_id": student.thread_id},
            }
            try:
                teacher = ask_teacher(config)
            except Exception as exc:  # a failed teacher is an outcome to count, not an error for the request
                logger.warning("%s: the shadow teacher failed: %s", student.node, exc)
                teacher, agree, outcome = None, None, "teacher_failed"
            else:
                agree = teacher == answer
                outcome = "agree" if agree else "disagree"
            decision = Decision(
                node=student.node,
                kind="shadow",
                input=student.input,
                output={"student": answer, "teacher": teacher, "agree": agree},
                confidence=student.confidence,
                strategy=student.strategy,
                model=teacher_model,
                outcome=outcome,
                thread_id=student.thread_id,
                metadata={"student_model": student.model, "shadow_of": student.id},
            )
            return log_decision(decision_log, decision)

        try:
            future = self._executor.submit(compare)
        except RuntimeError as exc:  # closed, or the interpreter is exiting: the request itself is served already
            logger.warning("%s: no shadow comparison: %s", student.node, exc)
            return None
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Decision]) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.warning("a shadow comparison was lost: %s", future.exception())

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every comparison submitted so far is logged (at most ``timeout`` seconds)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending, timeout=timeout)

    def close(self) -> None:
        """Finish the comparisons under way and stop the threads."""
        self._executor.shutdown(wait=True)


Bucket = Literal["hour", "day", "week"]


class AgreementBucket(NamedTuple):
    """Shadow comparisons in one period: how many the teacher answered, and the share where it agreed."""

    start: datetime
    n: int
    agreement: float | None


def bucket_start(timestamp: datetime, bucket: Bucket) -> datetime:
    """The start of the hour, day or week (from Monday) ``timestamp`` falls in, in its own time zone."""
    start = timestamp.replace(minute=0, second=0, microsecond=0)
    if bucket == "hour":
        return start
    start = start.replace(hour=0)
    return start - timedelta(days=start.weekday()) if bucket == "week" else start


def shadow_agreement(
    decisions: Iterable[Decision], *, bucket: Bucket = "day", node: str | None = None
) -> list[AgreementBucket]:
    """Teacher-student agreement per period from shadow decisions (``kind == "shadow"``; others are skipped).

    ``n`` counts the comparisons the teacher answered; one whose teacher failed
    counts in none, and a period with only those has agreement None.
    Periods come oldest first; periods without a comparison are left out.
    """
    counts: dict[datetime, list[int]] = {}
    for decision in decisions:
        if decision.kind != "shadow" or (node is not None and decision.node != node):
            continue
        tally = counts.setdefault(bucket_start(decision.timestamp, bucket), [0, 0])
        agree = decision.output.get("agree")
        if agree is not None:
            tally[0] += 1
            tally[1] += bool(agree)
    return [AgreementBucket(start, n, agreed / n if n else None) for start, (n, agreed) in sorted(counts.items())]
