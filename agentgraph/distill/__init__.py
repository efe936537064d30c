"""Distillation: from the frontier LLM's logged calls to training data for a small model.

- :mod:`agentgraph.records.traces` records every LLM call a graph makes
  (:class:`LLMCallRecorder`) in a trace store (:class:`SQLiteTraceStore`, or
  :class:`PostgresTraceStore` that workers share; :func:`open_trace_store` opens either) that
  also holds the SLM decisions, and takes each call's outcome later.
- :mod:`agentgraph.distill.dataset` curates a training set for one role from
  accepted calls and labelled files (``agentgraph distill dataset``).

Example:
    >>> from agentgraph.distill import DatasetConfig, SQLiteTraceStore
    >>> DatasetConfig(role="route").step_types
    ['route']
    >>> list(SQLiteTraceStore(":memory:").calls())
    []
"""

from agentgraph.distill.dataset import (
    CuratedDataset,
    DatasetConfig,
    DatasetError,
    Example,
    Source,
    build_dataset,
    file_examples,
    trace_examples,
    write_dataset,
)
from agentgraph.records.traces import (
    LLMCall,
    LLMCallRecorder,
    PostgresTraceStore,
    SQLiteTraceStore,
    TraceNotFoundError,
    open_trace_store,
)

__all__ = [
    "CuratedDataset",
    "DatasetConfig",
    "DatasetError",
    "Example",
    "LLMCall",
    "LLMCallRecorder",
    "PostgresTraceStore",
    "SQLiteTraceStore",
    "Source",
    "TraceNotFoundError",
    "build_dataset",
    "file_examples",
    "open_trace_store",
    "trace_examples",
    "write_dataset",
]
