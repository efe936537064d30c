"""Schema enforcer: text in, a validated pydantic instance out, or an explicit handoff to a person.

The node serves an :class:`~agentgraph.extraction.Extractor`: it climbs the
ladder of :mod:`agentgraph.extraction.extractor` (the SLM under a grammar, one
repair, the LLM, a handoff) and stops at the first rung that yields a valid
instance. Every SLM failure is a failed rung, never a crash.

The node's mode (:mod:`agentgraph.modes`) picks the rungs: ``auto`` (the
default) climbs them all; ``teacher`` asks the LLM alone, so every extraction
is a recorded LLM call; ``student`` never asks the LLM. With a
:class:`~agentgraph.shadow.ShadowEvaluator`, a sample of the SLM's valid
instances is also put to the LLM in the background.

Every candidate is validated with the input as validation context (see
:func:`~agentgraph.extraction.source_text_of`), so a validator can reject a
value the input does not contain. The node never returns an invalid object: its
output key holds a valid instance, or None with the handoff under ``handoff_key``.

Example:
    >>> from typing import TypedDict
    >>> from langgraph.graph import START, StateGraph
    >>> from agentgraph.records.decisions import DecisionState
    >>> from agentgraph.nodes.schema_enforcer import create_schema_enforcer
    >>> from agentgraph.slm import TransformersSLM
    >>> from agentgraph.graphs.customer_support import SupportTicket
    >>> class State(DecisionState, total=False):
    ...     text: str
    ...     ticket: SupportTicket | None
    ...     handoff: object
    >>> builder = StateGraph(State)
    >>> slm = TransformersSLM()
    >>> extract = create_schema_enforcer(slm, SupportTicket, output_key="ticket")
    >>> graph = builder.add_node("extract", extract).add_edge(START, "extract").compile()
    >>> result = graph.invoke({"text": "how can I cancel purchase 113542617735902?"})
    >>> result["ticket"].order_id, result["handoff"]
    ('113542617735902', None)
    >>> teacher_mode = create_schema_enforcer(slm, SupportTicket, mode="teacher")  # and no LLM configured
    >>> teacher_mode({"text": "cancel order 4587345"}, {})["handoff"].reason
    'schema_enforcer: no valid SupportTicket after no attempt (no LLM is configured)'
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from agentgraph.extraction import (
    Extraction,
    ExtractionAttempt,
    Extractor,
    ModelInput,
    describe_error,
    invalid_fields,
    schema_enforcer_message,
    source_text_of,
)
from agentgraph.extraction.attempts import ModelT
from agentgraph.llm import llm_name
from agentgraph.modes import Mode
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult, ShadowCheck
from agentgraph.records.decisions import DecisionLog
from agentgraph.shadow import ShadowEvaluator
from agentgraph.slm import SLM
from agentgraph.slm.base import tokens_of
from agentgraph.text import clean_text

__all__ = [
    "Extraction",
    "ExtractionAttempt",
    "Extractor",
    "ModelInput",
    "create_schema_enforcer",
    "describe_error",
    "invalid_fields",
    "schema_enforcer_message",
    "source_text_of",
]


def create_schema_enforcer(
    slm: SLM,
    schema: type[ModelT],
    *,
    llm: BaseChatModel | None = None,
    decision_log: DecisionLog | None = None,
    input_key: str = "text",
    context_key: str | None = None,
    output_key: str = "extracted",
    handoff_key: str = "handoff",
    name: str = "schema_enforcer",
    max_tokens: int = 256,
    prompt_version: int | None = None,
    max_input_tokens: int | None = None,
    mode: Mode | None = None,
    shadow: ShadowEvaluator | None = None,
    describe_schema: bool = True,
) -> ControlNode:
    """A LangGraph node that turns ``state[input_key]`` into a valid ``schema`` instance.

    Args:
        slm: the small model that does the work.
        schema: the pydantic model to produce. Validators may read the input via :func:`source_text_of`.
        llm: the fallback after the SLM and its repair fail; it must support ``with_structured_output``.
            None goes straight to a human handoff.
        decision_log: where each call's :class:`~agentgraph.records.decisions.Decision` is also written.
        input_key: state key of the text to extract from.
        context_key: optional state key of extra text (earlier turns, say) shown to the model
            beside the text; values may come from either.
        output_key: state key for the instance (None after a handoff).
        handoff_key: state key for the :class:`~agentgraph.llm.HumanHandoff` (None when an instance was made).
        name: the node name in decision records.
        max_tokens: the most tokens one SLM answer may take.
        prompt_version: pin a version of the ``schema_enforcer`` prompt (default: the newest).
        max_input_tokens: cap text plus context below what the SLM's context leaves (bounds latency).
        mode: ``auto``: the whole ladder; ``teacher``: the LLM alone (the SLM is not asked), then the
            handoff; ``student``: the SLM and its repair, then the handoff (the LLM is never asked).
            See :mod:`agentgraph.modes`; the decision's ``metadata["mode"]`` records it.
        shadow: sends a sample of the SLM's valid instances to the LLM too, in the background
            (decisions of kind ``shadow`` in ``decision_log``).
        describe_schema: whether the SLM's prompt states the JSON schema. False for an SLM distilled on
            ``schema`` (:func:`agentgraph.distill.extract.load_extraction_artifact` reads it from the artifact);
            the grammar enforces the schema either way, and the LLM is always shown it.

    Input longer than the SLM's context budget is cut (at a word boundary, with a
    logged warning; not in teacher mode, where the SLM does not read it); empty input
    raises :class:`~agentgraph.errors.EmptyInputError` after its decision is logged.
    """
    extractor = Extractor(
        slm, schema, llm=llm, name=name, max_tokens=max_tokens, prompt_version=prompt_version,
        max_input_tokens=max_input_tokens, describe_schema=describe_schema,
    )  # fmt: skip

    def schema_enforcer(call: NodeCall) -> NodeResult:
        context = clean_text(call.state.get(context_key) or "") if context_key else ""
        assert call.mode is not None  # the node has modes: the kernel always gives one
        extraction, shown = extractor.extract(call.value, context, mode=call.mode)
        strategy = extraction.strategy
        served: BaseModel | None = extraction.value if extraction.value is not None else extraction.handoff
        assert served is not None  # the ladder ends in an instance or a handoff
        output = served.model_dump(mode="json")
        result = NodeResult(
            {output_key: extraction.value, handoff_key: extraction.handoff},
            input={"text": shown.text, "context": shown.context or None},
            output=output,
            confidence=extraction.attempts[-1].confidence if extraction.value is not None else None,
            strategy=strategy,
            escalated=strategy in ("llm", "handoff"),
            outcome={"slm": "ok", "slm_repair": "repaired", "llm": "escalated", "handoff": "handoff"}[strategy],
            model=llm_name(llm) if strategy == "llm" and llm is not None else slm.model_name,
            metadata={
                "truncated": shown.truncated,
                "input_chars": len(call.value),
                "attempts": [a.model_dump() for a in extraction.attempts],
            },
            **tokens_of(attempt.usage for attempt in extraction.attempts),
        )
        if llm is not None and strategy in ("slm", "slm_repair"):
            result.shadow = ShadowCheck(
                output,
                lambda shadow_config: extractor.llm_instance(shown, shadow_config).model_dump(mode="json"),
                llm_name(llm),
            )
        return result

    return ControlNode(
        schema_enforcer, name=name, kind="extract", input_key=input_key, what="text", decision_log=decision_log, mode=mode,
        default_mode="auto", shadow=shadow, metadata={"schema": schema.__name__, "prompt": extractor.prompt.id},
    )  # fmt: skip
