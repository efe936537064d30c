"""Records: what the control layer decided and what the LLM was asked, kept for tracing and distillation.

The layer below both :mod:`agentgraph.nodes` (which write records) and :mod:`agentgraph.distill`
(which learns from them); it imports neither.

- :mod:`agentgraph.records.decisions`: one :class:`~agentgraph.records.decisions.Decision` per node
  decision, and the decision logs that keep them.
- :mod:`agentgraph.records.traces`: every LLM call a graph makes
  (:class:`~agentgraph.records.traces.LLMCallRecorder`), its step type (``step:<type>`` tags), and the
  trace stores that keep calls with their outcomes.

Example:
    >>> from agentgraph.records.decisions import Decision, SQLiteDecisionLog
    >>> from agentgraph.records.traces import SQLiteTraceStore
    >>> log = SQLiteDecisionLog(":memory:")
    >>> log.record(Decision(node="router", kind="route", input="where is my order?", output="lookup"))
    >>> [d.output for d in log.decisions(kind="route")], list(SQLiteTraceStore(":memory:").calls())
    (['lookup'], [])
"""
