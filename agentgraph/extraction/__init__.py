"""The schema enforcer's decision logic, without a graph: the ladder, its attempts, the model's input.

The schema enforcer node (:func:`agentgraph.nodes.schema_enforcer.create_schema_enforcer`)
serves an :class:`Extractor` in a graph; distillation gates and checks its students with
one, so neither imports the other.

Example:
    >>> from agentgraph.extraction import schema_enforcer_message
    >>> "where is order 10001?" in schema_enforcer_message("where is order 10001?")
    True
"""

from agentgraph.extraction.attempts import (
    Extraction,
    ExtractionAttempt,
    ModelInput,
    describe_error,
    invalid_fields,
    schema_enforcer_message,
    source_text_of,
)
from agentgraph.extraction.extractor import Extractor

__all__ = [
    "Extraction",
    "ExtractionAttempt",
    "Extractor",
    "ModelInput",
    "describe_error",
    "invalid_fields",
    "schema_enforcer_message",
    "source_text_of",
]
