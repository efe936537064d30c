"""The schema enforcer's ladder without a graph: text in, a valid instance or a handoff out.

:class:`Extractor` climbs a fixed ladder and stops at the first rung that
yields a valid instance:

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

The mode (:mod:`agentgraph.modes`) picks the rungs: ``auto`` climbs them all;
``teacher`` asks the LLM alone (rung 3, then 4); ``student`` never asks the LLM
(rungs 1, 2 and 4).

The grammar guarantees well-formed JSON of the right shape; what it cannot
express (a value that must occur in the input, a cross-field rule) is checked
by the schema's own validators. Every candidate is validated with the
*validation context* ``{"source_text": ...}`` (the text, and the context when
there is one: all the model was shown), so a validator can reject a value the
input does not contain (see :func:`~agentgraph.extraction.attempts.source_text_of`).

The schema enforcer node (:func:`agentgraph.nodes.schema_enforcer.create_schema_enforcer`)
serves an :class:`Extractor` in a graph; distillation gates and checks its students with one.

Example:
    >>> from pydantic import BaseModel
    >>> from agentgraph.extraction import Extractor
    >>> from agentgraph.slm import TransformersSLM
    >>> class Order(BaseModel):
    ...     order_id: str | None
    >>> extraction, shown = Extractor(TransformersSLM(), Order, max_tokens=32).extract("where is order 4587345?")
    >>> extraction.value, extraction.strategy, shown.truncated
    (Order(order_id='4587345'), 'slm', {'text': False, 'context': False})
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from typing import Any, Generic, Literal, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError

from agentgraph.errors import ConfigError, SLMError, StructuredOutputError
from agentgraph.extraction.attempts import (
    Extraction,
    ExtractionAttempt,
    ModelInput,
    ModelT,
    describe_error,
    invalid_fields,
    null_invalid_fields,
    schema_enforcer_message,
)
from agentgraph.llm import HumanHandoff
from agentgraph.modes import Mode
from agentgraph.prompting import load_prompt
from agentgraph.records.traces import REQUEST_TEXT_KEY, STEP_TAG_PREFIX
from agentgraph.slm import SLM
from agentgraph.slm.base import json_schema_instruction, structured_messages
from agentgraph.text import require_text, truncate_to_tokens

logger = logging.getLogger(__name__)

# A repair prompt adds the rejected answer (at most max_tokens) and the errors
# (cut to MAX_ERROR_CHARS in agentgraph.extraction.attempts, well under this many tokens) to the first prompt.
_REPAIR_TEXT_TOKENS = 256


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class Extractor(Generic[ModelT]):
    """The ladder for one schema: the SLM, its repair, the LLM, a handoff.

    Args:
        slm: the small model that does the work.
        schema: the pydantic model to produce. Validators may read the input via
            :func:`~agentgraph.extraction.attempts.source_text_of`.
        llm: the fallback after the SLM and its repair fail; it must support ``with_structured_output``.
            None goes straight to a human handoff.
        name: who the handoff and the log lines name.
        max_tokens: the most tokens one SLM answer may take.
        prompt_version: pin a version of the ``schema_enforcer`` prompt (default: the newest).
        max_input_tokens: cap text plus context below what the SLM's context leaves (bounds latency).
        describe_schema: whether the SLM's prompt states the JSON schema. False for an SLM distilled on
            ``schema`` (:func:`agentgraph.distill.extract.load_extraction_artifact` reads it from the artifact);
            the grammar enforces the schema either way, and the LLM is always shown it.
    """

    def __init__(
        self,
        slm: SLM,
        schema: type[ModelT],
        *,
        llm: BaseChatModel | None = None,
        name: str = "schema_enforcer",
        max_tokens: int = 256,
        prompt_version: int | None = None,
        max_input_tokens: int | None = None,
        describe_schema: bool = True,
    ) -> None:
        self.slm = slm
        self.schema = schema
        self.llm = llm
        self.name = name
        self.max_tokens = max_tokens
        self.max_input_tokens = max_input_tokens
        self.describe_schema = describe_schema
        self.prompt = load_prompt("schema_enforcer", prompt_version)
        self._instruction = json_schema_instruction(schema)
        self._structured_llm = (
            llm.with_structured_output(schema, include_raw=True).with_config(tags=[f"{STEP_TAG_PREFIX}extract"])
            if llm is not None
            else None
        )
        # Parametrized at run time, so pydantic validates the value as ``schema``.
        self._extraction_model: type[Extraction[ModelT]] = Extraction[schema]  # type: ignore[valid-type]

    def extract(self, text: str, context: str = "", *, mode: Mode = "auto") -> tuple[Extraction[ModelT], ModelInput]:
        """The ladder's end for ``text`` (and ``context``), and the input as the models were shown it.

        Input longer than the SLM's context budget is cut (at a word boundary, with a logged
        warning; not in teacher mode, where the SLM does not read it); empty text raises
        :class:`~agentgraph.errors.EmptyInputError`.
        """
        text = require_text(text, what="text")
        value: ModelT | None = None
        attempts: list[ExtractionAttempt] = []
        shown: ModelInput | None = None
        if mode != "teacher":
            value, attempts, shown = self._slm_rungs(text, context)
        if shown is None:  # teacher mode, or an SLM that could not count tokens: the LLM sees the input as given
            shown = self.model_input(text, context)
        if value is None and mode != "student" and self._structured_llm is not None:
            value, attempt = self._ask_llm(shown)
            attempts.append(attempt)
        return self._ladder_end(value, attempts, shown, mode), shown

    def model_input(self, text: str, context: str, truncated: dict[str, bool] | None = None) -> ModelInput:
        message = schema_enforcer_message(text, context, prompt_version=self.prompt.version)
        return ModelInput(text, context, message, truncated or {"text": False, "context": False})

    @cached_property
    def input_budget(self) -> int:
        """Tokens left for text and context once the instruction, the template, the answer and a repair are counted."""
        first_message = structured_messages(schema_enforcer_message("", prompt_version=self.prompt.version),
                                            self.schema, describe_schema=self.describe_schema)  # fmt: skip
        overhead = len(self.slm.tokenize_chat(first_message, add_generation_prompt=True))
        budget = self.slm.max_context_tokens - overhead - 2 * self.max_tokens - _REPAIR_TEXT_TOKENS
        if budget <= 0:
            raise ValueError(
                f"the {self.schema.__name__} instruction leaves no room for input in {self.slm.max_context_tokens} "
                "tokens; lower max_tokens or use a model with a longer context"
            )
        return budget if self.max_input_tokens is None else min(budget, self.max_input_tokens)

    def _fit_to_budget(self, text: str, context: str) -> ModelInput:
        """The input cut to the SLM's budget; raises :class:`SLMError` when the SLM cannot count tokens."""
        available = self.input_budget
        count = self.slm.count_tokens
        context, context_cut = truncate_to_tokens(context, max_tokens=available // 2, count_tokens=count)
        text_budget = available - (count(context) if context else 0)
        text, text_cut = truncate_to_tokens(text, max_tokens=text_budget, count_tokens=count)
        return self.model_input(text, context, {"text": text_cut, "context": context_cut})

    def _ask_slm(
        self, strategy: Literal["slm", "slm_repair"], message: str, validation_context: dict[str, str]
    ) -> tuple[ModelT | None, ExtractionAttempt]:
        started = time.perf_counter()
        try:
            result = self.slm.structured(message, self.schema, max_tokens=self.max_tokens,
                                         describe_schema=self.describe_schema)  # fmt: skip
        except StructuredOutputError as exc:
            attempt = ExtractionAttempt(strategy=strategy, output=exc.text, error=describe_error(exc),
                                        invalid_fields=invalid_fields(exc), latency_ms=_elapsed_ms(started),
                                        usage=exc.usage)  # fmt: skip
            return None, attempt
        except SLMError as exc:
            logger.warning("%s: the SLM failed (%s); skipping to the next fallback", self.name, exc)
            return None, ExtractionAttempt(strategy=strategy, error=str(exc), latency_ms=_elapsed_ms(started))
        attempt = ExtractionAttempt(
            strategy=strategy,
            output=result.text,
            confidence=result.confidence,
            latency_ms=_elapsed_ms(started),
            usage=result.usage,
        )
        try:
            return self.schema.model_validate_json(result.text, context=validation_context), attempt
        except ValidationError as exc:
            attempt.error, attempt.invalid_fields = describe_error(exc), invalid_fields(exc)
            return None, attempt

    def llm_instance(self, shown: ModelInput, config: RunnableConfig | None = None) -> ModelT:
        """The LLM's valid instance for the input ``shown``; raises when the call fails or its answer is not valid."""
        if self._structured_llm is None:
            raise ConfigError(f"{self.name} has no LLM to ask")
        traced = self._structured_llm.with_config(metadata={REQUEST_TEXT_KEY: shown.request_text})
        messages = [SystemMessage(self._instruction), HumanMessage(shown.message)]
        # include_raw=True: the reply is a dict of raw, parsed and parsing_error.
        reply = cast(dict[str, Any], traced.invoke(messages, config))
        if reply["parsing_error"] is not None:
            raise reply["parsing_error"]
        return self.schema.model_validate(reply["parsed"].model_dump(), context=shown.validation_context)

    def _ask_llm(self, shown: ModelInput) -> tuple[ModelT | None, ExtractionAttempt]:
        started = time.perf_counter()
        try:
            value = self.llm_instance(shown)
        except Exception as exc:  # a provider error or an invalid reply alike: the request goes to a person
            logger.warning("%s: the LLM fallback failed: %s", self.name, exc)
            return None, ExtractionAttempt(strategy="llm", error=describe_error(exc), latency_ms=_elapsed_ms(started))
        return value, ExtractionAttempt(strategy="llm", output=value.model_dump_json(), latency_ms=_elapsed_ms(started))

    def _repair(
        self, rejected: ExtractionAttempt, text: str, context: str, validation_context: dict[str, str]
    ) -> tuple[ModelT | None, ExtractionAttempt]:
        if rejected.invalid_fields:
            value, attempt = null_invalid_fields(self.schema, rejected, validation_context)
            if value is not None:
                return value, attempt
        message = self.prompt.render(text=text, context=context, rejected=rejected.output, errors=rejected.error)
        return self._ask_slm("slm_repair", message, validation_context)

    def _slm_rungs(self, text: str, context: str) -> tuple[ModelT | None, list[ExtractionAttempt], ModelInput | None]:
        """Rungs 1 and 2 on the input fitted to the SLM's budget (None when the SLM could not count its tokens)."""
        started = time.perf_counter()
        try:
            shown = self._fit_to_budget(text, context)
        except SLMError as exc:
            logger.warning("%s: the SLM failed counting tokens (%s); skipping to the next fallback", self.name, exc)
            return None, [ExtractionAttempt(strategy="slm", error=str(exc), latency_ms=_elapsed_ms(started))], None
        value, attempt = self._ask_slm("slm", shown.message, shown.validation_context)
        attempts = [attempt]
        if value is None and attempt.output is not None:
            value, attempt = self._repair(attempt, shown.text, shown.context, shown.validation_context)
            attempts.append(attempt)
        return value, attempts, shown

    def _ladder_end(
        self, value: ModelT | None, attempts: list[ExtractionAttempt], shown: ModelInput, mode: Mode
    ) -> Extraction[ModelT]:
        """The valid instance, or a handoff that says what was tried."""
        if value is not None:
            return self._extraction_model(value=value, handoff=None, attempts=attempts)
        tried = ", ".join(a.strategy for a in attempts) or "no attempt"
        if mode == "student":
            tried += " (student mode: the LLM is not asked)"
        elif self._structured_llm is None:
            tried += " (no LLM is configured)"
        handoff = HumanHandoff(
            reason=f"{self.name}: no valid {self.schema.__name__} after {tried}"
            + (f"; last error: {attempts[-1].error}" if attempts else ""),
            request={"text": shown.text, "context": shown.context, "schema": self.schema.__name__},
        )
        return self._extraction_model(value=None, handoff=handoff, attempts=attempts)
