"""Schema enforcer: text in, a validated pydantic instance out, or an explicit handoff to a person.

The node climbs a fixed ladder and stops at the first rung that yields a valid
instance:

1. ``slm``: schema-first prompt and grammar-constrained decoding
   (:meth:`agentgraph.slm.SLM.structured`), then pydantic validation.
2. ``slm_repair``: one repair of the SLM's answer. When every field that
   failed validation may be null, those fields are set to null, and so are any
   that fail only once they are (a cross-field check) (the schema-first
   prompt says "null for a field the message does not mention", so an
   ungrounded optional value is one the message did not give); otherwise the SLM
   is asked once more, shown its rejected answer and the validation errors.
3. ``llm``: the frontier LLM through ``with_structured_output``.
4. ``handoff``: a :class:`~agentgraph.llm.HumanHandoff` carrying the input and
   every failed attempt.

Every SLM call is a rung of the ladder, counting the input's tokens to fit it
to the SLM's context included: an SLM that fails (a server gone after start,
:class:`~agentgraph.errors.SLMUnavailableError` or any other
:class:`~agentgraph.errors.SLMError`) is recorded as a failed ``slm`` attempt,
and the LLM, or the handoff, takes over with the input as given.

The node's mode (:mod:`agentgraph.modes`) picks the rungs: ``auto`` (the
default) climbs them all; ``teacher`` asks the LLM alone (rung 3, then 4), so
every extraction is a recorded LLM call; ``student`` never asks the LLM (rungs
1, 2 and 4). With a :class:`~agentgraph.shadow.ShadowEvaluator`, a sample of
the SLM's valid instances is also put to the LLM in the background.

The grammar guarantees well-formed JSON of the right shape; what it cannot
express (a value that must occur in the input, a cross-field rule) is checked
by the schema's own validators. Every candidate is validated with the
*validation context* ``{"source_text": ...}`` (the text, and the context when
there is one: all the model was shown), so a validator can reject a value the
input does not contain (see :func:`source_text_of`). The node never returns an
invalid object: its output key holds a valid instance, or None with the
handoff under ``handoff_key``.

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

import logging
import time
from functools import cache
from typing import Any, Literal, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ValidationError

from agentgraph.errors import ConfigError, SLMError, StructuredOutputError
from agentgraph.llm import HumanHandoff, llm_name
from agentgraph.modes import Mode
from agentgraph.nodes.extraction import (
    Extraction,
    ExtractionAttempt,
    ModelInput,
    ModelT,
    describe_error,
    invalid_fields,
    null_invalid_fields,
    schema_enforcer_message,
    source_text_of,
)
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult, ShadowCheck
from agentgraph.prompting import load_prompt
from agentgraph.records.decisions import DecisionLog
from agentgraph.records.traces import REQUEST_TEXT_KEY, STEP_TAG_PREFIX
from agentgraph.shadow import ShadowEvaluator
from agentgraph.slm import SLM
from agentgraph.slm.base import json_schema_instruction, structured_messages
from agentgraph.text import clean_text, truncate_to_tokens

__all__ = [
    "Extraction",
    "ExtractionAttempt",
    "ModelInput",
    "create_schema_enforcer",
    "describe_error",
    "invalid_fields",
    "schema_enforcer_message",
    "source_text_of",
]

logger = logging.getLogger(__name__)

# A repair prompt adds the rejected answer (at most max_tokens) and the errors
# (cut to MAX_ERROR_CHARS in agentgraph.nodes.extraction, well under this many tokens) to the first prompt.
_REPAIR_TEXT_TOKENS = 256


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


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
            ``schema`` (:func:`agentgraph.distill.extract.load_schema_enforcer` reads it from the artifact);
            the grammar enforces the schema either way, and the LLM is always shown it.

    Input longer than the SLM's context budget is cut (at a word boundary, with a
    logged warning; not in teacher mode, where the SLM does not read it); empty input
    raises :class:`~agentgraph.errors.EmptyInputError` after its decision is logged.
    """
    structured_llm = (
        llm.with_structured_output(schema, include_raw=True).with_config(tags=[f"{STEP_TAG_PREFIX}extract"])
        if llm is not None
        else None
    )
    prompt = load_prompt("schema_enforcer", prompt_version)
    instruction = json_schema_instruction(schema)
    # Parametrized at run time, so pydantic validates the value as ``schema``.
    extraction_model: type[Extraction[ModelT]] = Extraction[schema]  # type: ignore[valid-type]

    @cache
    def input_budget() -> int:
        # Tokens left for text and context once the instruction, the template,
        # the answer and a possible repair are accounted for.
        first_message = structured_messages(schema_enforcer_message("", prompt_version=prompt.version), schema,
                                            describe_schema=describe_schema)  # fmt: skip
        overhead = len(slm.tokenize_chat(first_message, add_generation_prompt=True))
        budget = slm.max_context_tokens - overhead - 2 * max_tokens - _REPAIR_TEXT_TOKENS
        if budget <= 0:
            raise ValueError(
                f"the {schema.__name__} instruction leaves no room for input in {slm.max_context_tokens} tokens; "
                "lower max_tokens or use a model with a longer context"
            )
        return budget if max_input_tokens is None else min(budget, max_input_tokens)

    def model_input(text: str, context: str, truncated: dict[str, bool] | None = None) -> ModelInput:
        message = schema_enforcer_message(text, context, prompt_version=prompt.version)
        return ModelInput(text, context, message, truncated or {"text": False, "context": False})

    def fit_to_budget(text: str, context: str) -> ModelInput:
        """The input cut to the SLM's budget; raises :class:`SLMError` when the SLM cannot count tokens."""
        available = input_budget()
        context, context_cut = truncate_to_tokens(context, max_tokens=available // 2, count_tokens=slm.count_tokens)
        text_budget = available - (slm.count_tokens(context) if context else 0)
        text, text_cut = truncate_to_tokens(text, max_tokens=text_budget, count_tokens=slm.count_tokens)
        return model_input(text, context, {"text": text_cut, "context": context_cut})

    def ask_slm(
        strategy: Literal["slm", "slm_repair"], message: str, validation_context: dict[str, str]
    ) -> tuple[ModelT | None, ExtractionAttempt]:
        started = time.perf_counter()
        try:
            result = slm.structured(message, schema, max_tokens=max_tokens, describe_schema=describe_schema)
        except StructuredOutputError as exc:
            attempt = ExtractionAttempt(strategy=strategy, output=exc.text, error=describe_error(exc),
                                        invalid_fields=invalid_fields(exc), latency_ms=_elapsed_ms(started))  # fmt: skip
            return None, attempt
        except SLMError as exc:
            logger.warning("%s: the SLM failed (%s); skipping to the next fallback", name, exc)
            return None, ExtractionAttempt(strategy=strategy, error=str(exc), latency_ms=_elapsed_ms(started))
        attempt = ExtractionAttempt(
            strategy=strategy, output=result.text, confidence=result.confidence, latency_ms=_elapsed_ms(started)
        )
        try:
            return schema.model_validate_json(result.text, context=validation_context), attempt
        except ValidationError as exc:
            attempt.error, attempt.invalid_fields = describe_error(exc), invalid_fields(exc)
            return None, attempt

    def llm_instance(
        message: str, validation_context: dict[str, str], request_text: str | None, config: RunnableConfig | None = None
    ) -> ModelT:
        """The LLM's valid instance for ``message``; raises when the call fails or its answer is not valid.

        ``request_text`` (None when the message also holds context) is recorded in the call's metadata: a
        traced call becomes a distillation example of the request, not of the fenced message.
        """
        if structured_llm is None:
            raise ConfigError(f"{name} has no LLM to ask")
        traced = structured_llm.with_config(metadata={REQUEST_TEXT_KEY: request_text})
        # include_raw=True: the reply is a dict of raw, parsed and parsing_error.
        reply = cast(dict[str, Any], traced.invoke([SystemMessage(instruction), HumanMessage(message)], config))
        if reply["parsing_error"] is not None:
            raise reply["parsing_error"]
        return schema.model_validate(reply["parsed"].model_dump(), context=validation_context)

    def ask_llm(
        message: str, validation_context: dict[str, str], request_text: str | None
    ) -> tuple[ModelT | None, ExtractionAttempt]:
        started = time.perf_counter()
        try:
            value = llm_instance(message, validation_context, request_text)
        except Exception as exc:  # a provider error or an invalid reply alike: the request goes to a person
            logger.warning("%s: the LLM fallback failed: %s", name, exc)
            return None, ExtractionAttempt(strategy="llm", error=describe_error(exc), latency_ms=_elapsed_ms(started))
        return value, ExtractionAttempt(strategy="llm", output=value.model_dump_json(), latency_ms=_elapsed_ms(started))

    def repair(
        rejected: ExtractionAttempt, text: str, context: str, validation_context: dict[str, str]
    ) -> tuple[ModelT | None, ExtractionAttempt]:
        if rejected.invalid_fields:
            value, attempt = null_invalid_fields(schema, rejected, validation_context)
            if value is not None:
                return value, attempt
        message = prompt.render(text=text, context=context, rejected=rejected.output, errors=rejected.error)
        return ask_slm("slm_repair", message, validation_context)

    def slm_rungs(text: str, context: str) -> tuple[ModelT | None, list[ExtractionAttempt], ModelInput | None]:
        """Rungs 1 and 2 on the input fitted to the SLM's budget (None when the SLM could not count its tokens)."""
        started = time.perf_counter()
        try:
            shown = fit_to_budget(text, context)
        except SLMError as exc:
            logger.warning("%s: the SLM failed counting tokens (%s); skipping to the next fallback", name, exc)
            return None, [ExtractionAttempt(strategy="slm", error=str(exc), latency_ms=_elapsed_ms(started))], None
        value, attempt = ask_slm("slm", shown.message, shown.validation_context)
        attempts = [attempt]
        if value is None and attempt.output is not None:
            value, attempt = repair(attempt, shown.text, shown.context, shown.validation_context)
            attempts.append(attempt)
        return value, attempts, shown

    def extract(text: str, context: str, mode: Mode) -> tuple[Extraction[ModelT], ModelInput]:
        value: ModelT | None = None
        attempts: list[ExtractionAttempt] = []
        shown: ModelInput | None = None
        if mode != "teacher":
            value, attempts, shown = slm_rungs(text, context)
        if shown is None:  # teacher mode, or an SLM that could not count tokens: the LLM sees the input as given
            shown = model_input(text, context)
        if value is None and mode != "student" and structured_llm is not None:
            value, attempt = ask_llm(shown.message, shown.validation_context, None if shown.context else shown.text)
            attempts.append(attempt)
        return ladder_end(value, attempts, shown, mode), shown

    def ladder_end(
        value: ModelT | None, attempts: list[ExtractionAttempt], shown: ModelInput, mode: Mode
    ) -> Extraction[ModelT]:
        """The valid instance, or a handoff that says what was tried."""
        if value is not None:
            return extraction_model(value=value, handoff=None, attempts=attempts)
        tried = ", ".join(a.strategy for a in attempts) or "no attempt"
        if mode == "student":
            tried += " (student mode: the LLM is not asked)"
        elif structured_llm is None:
            tried += " (no LLM is configured)"
        handoff = HumanHandoff(
            reason=f"{name}: no valid {schema.__name__} after {tried}"
            + (f"; last error: {attempts[-1].error}" if attempts else ""),
            request={"text": shown.text, "context": shown.context, "schema": schema.__name__},
        )
        return extraction_model(value=None, handoff=handoff, attempts=attempts)

    def schema_enforcer(call: NodeCall) -> NodeResult:
        context = clean_text(call.state.get(context_key) or "") if context_key else ""
        assert call.mode is not None  # the node has modes: the kernel always gives one
        extraction, shown = extract(call.value, context, call.mode)
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
        )
        if llm is not None and strategy in ("slm", "slm_repair"):
            result.shadow = ShadowCheck(
                output,
                lambda shadow_config: llm_instance(
                    shown.message, shown.validation_context, None if shown.context else shown.text, shadow_config
                ).model_dump(mode="json"),
                llm_name(llm),
            )
        return result

    return ControlNode(
        schema_enforcer, name=name, kind="extract", input_key=input_key, what="text", decision_log=decision_log, mode=mode,
        default_mode="auto", shadow=shadow, metadata={"schema": schema.__name__, "prompt": prompt.id},
    )  # fmt: skip
