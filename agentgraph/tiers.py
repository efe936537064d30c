"""LLM tiers: an efficient, a frontier and a reasoning chat model, chosen per step type, cheapest tried first.

:class:`LLMTiers` holds up to three langchain-core chat models, one per :data:`Tier`, and a table
from step type (``plan``, ``escalate``, ``route``, ...) to the tier that serves it.
:meth:`LLMTiers.model_for` gives a node the chat model of a step: it goes wherever a node takes an
``llm`` today. A tier with no model is served by the next configured tier above it (else the
nearest below), so a single model, today's ``AGENTGRAPH_LLM_MODEL``, serves every step.

A step in ``cascades`` gets a :class:`CascadeChatModel`: its own tier answers first, and the next
tier up (to the step's ceiling) is asked only when that answer is rejected: the call failed, a
structured-output answer does not parse, the ``validator`` returns False, or its confidence is
below ``min_confidence``. Confidence is measured, never asked for: the answer's mean token
probability from the log-probs the provider returns in ``response_metadata["logprobs"]``
(``ChatOpenAI(logprobs=True)``); an answer without log-probs is judged on validity alone. It works
for ``invoke``, ``ainvoke``, ``stream``, ``batch``, ``with_structured_output`` and ``bind_tools``.

Every run a tier's model makes carries the tier in its metadata (:data:`TIER_KEY`), so the
:class:`~agentgraph.records.traces.LLMCallRecorder` stores it on each
:class:`~agentgraph.records.traces.LLMCall` and :func:`~agentgraph.records.costs.cost_report`
shows the calls and the cost per tier.

From the environment (:meth:`LLMTiers.from_env`): ``AGENTGRAPH_LLM_EFFICIENT_MODEL``,
``AGENTGRAPH_LLM_FRONTIER_MODEL`` (default ``AGENTGRAPH_LLM_MODEL``), ``AGENTGRAPH_LLM_REASONING_MODEL``,
each with ``_BASE_URL`` and ``_API_KEY`` (default the shared ``AGENTGRAPH_LLM_BASE_URL`` and
``AGENTGRAPH_LLM_API_KEY``, then ``OPENAI_*``) and ``_LOGPROBS=1`` to ask it for log-probs;
``AGENTGRAPH_LLM_STEPS`` (``plan=frontier,escalate=efficient``) and ``AGENTGRAPH_LLM_CASCADES``
(``escalate=frontier``) change entries of the default tables; ``AGENTGRAPH_LLM_MIN_CONFIDENCE``.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from agentgraph.tiers import LLMTiers
    >>> def unsure(text):  # a reply whose every token the model gave 1 chance in 10
    ...     return AIMessage(text, response_metadata={"logprobs": {"content": [{"token": text, "logprob": -2.3}]}})
    >>> efficient = GenericFakeChatModel(messages=iter([AIMessage("Your parcel left on Monday."), unsure("Maybe?")]))
    >>> frontier = GenericFakeChatModel(messages=iter([AIMessage("A colleague will call you today.")]))
    >>> tiers = LLMTiers(models={"efficient": efficient, "frontier": frontier}, cascades={"escalate": "frontier"})
    >>> tiers.tier_for("plan"), tiers.tier_for("escalate")
    ('frontier', 'efficient')
    >>> llm = tiers.model_for("escalate")
    >>> llm.invoke("Where is my parcel?").content  # the efficient tier is sure enough
    'Your parcel left on Monday.'
    >>> llm.invoke("I want to speak to a person").content  # it was unsure: the frontier tier answers
    'A colleague will call you today.'
    >>> LLMTiers().model_for("plan") is None  # no model configured: the caller hands off to a person
    True
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast, get_args

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field, SecretStr, ValidationError

from agentgraph.errors import ConfigError
from agentgraph.llm import LLMSettings, default_llm, llm_name
from agentgraph.records.traces import TIER_KEY

logger = logging.getLogger(__name__)

Tier = Literal["efficient", "frontier", "reasoning"]
"""An LLM tier: a model class by cost and strength."""
TIERS: tuple[Tier, ...] = get_args(Tier)
"""The tiers, cheapest first: the order a cascade climbs."""

DEFAULT_STEPS: dict[str, Tier] = {
    "route": "efficient",
    "extract": "efficient",
    "classify_tool": "efficient",
    "evaluate": "efficient",
    "escalate": "efficient",
    "plan": "frontier",
    "replan": "reasoning",
}
"""Step type to tier: the control layer's teacher calls and escalations on the efficient tier, the plan on the
frontier one, a replan (a plan that already failed once) on the reasoning one."""
DEFAULT_CASCADES: dict[str, Tier] = {"route": "frontier", "extract": "frontier", "escalate": "frontier"}
"""Step type to the highest tier its cascade may climb to: a rejected efficient answer goes to the frontier tier."""
DEFAULT_MIN_CONFIDENCE = 0.5
"""Below this mean token probability a cascade's answer is rejected: about every other token was a guess."""


def answer_confidence(message: BaseMessage) -> float | None:
    """The mean token probability of an answer from its log-probs (OpenAI's format); None when it has none.

    The geometric mean rather than the joint probability: the joint one shrinks with every token, so a long,
    sure answer would always look less confident than a short one.
    """
    logprobs = ((message.response_metadata or {}).get("logprobs") or {}).get("content") or []
    values = [token["logprob"] for token in logprobs if token.get("logprob") is not None]
    return math.exp(sum(values) / len(values)) if values else None


def rejection(
    answer: Any, message: BaseMessage | None, validator: Callable[[Any], bool] | None, min_confidence: float
) -> str | None:
    """Why a cascade rejects ``answer`` (``message``: the reply it came in, for its log-probs); None to accept it.

    A ``validator`` that raises a ``ValueError`` (a pydantic ``ValidationError``, say) rejects the answer too.
    """
    if validator is not None:
        try:
            if not validator(answer):
                return "the validator rejected it"
        except ValueError as exc:
            return f"the validator rejected it: {exc}"
    confidence = answer_confidence(message) if message is not None else None
    if confidence is not None and confidence < min_confidence:
        return f"its confidence {confidence:.2f} is below {min_confidence:.2f}"
    return None


class TierCascade(Runnable[LanguageModelInput, Any]):
    """Asks each tier's runnable in turn, cheapest first, and returns the first answer ``reject`` lets through.

    The last tier's answer is returned whatever it is (there is no one above to ask), and its error raised.

    Args:
        rungs: ``(tier, runnable)`` pairs, cheapest first.
        reject: why an output is rejected, None to accept it.
        answer: what the caller gets from the accepted output (default: the output itself).
    """

    def __init__(
        self,
        rungs: Sequence[tuple[Tier, Runnable[LanguageModelInput, Any]]],
        reject: Callable[[Any], str | None],
        answer: Callable[[Any], Any] = lambda output: output,
    ) -> None:
        if not rungs:
            raise ValueError("a cascade needs at least one tier")
        self.rungs = list(rungs)
        self.reject = reject
        self.answer = answer
        self.name = "TierCascade"

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._climb, input, config, **kwargs)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._aclimb, input, config, **kwargs)

    def _climb(
        self, input: LanguageModelInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        # config holds the chain run's child callbacks: each tier's call is traced inside the cascade's run.
        for (tier, runnable), (following, _) in zip(self.rungs, self.rungs[1:], strict=False):
            try:
                output = runnable.invoke(input, config, **kwargs)
            except Exception as exc:  # any provider error: the next tier can still answer
                logger.info("the %s tier failed (%s): asking the %s tier", tier, exc, following)
                continue
            if (reason := self.reject(output)) is None:
                return self.answer(output)
            logger.info("the %s tier's answer is rejected (%s): asking the %s tier", tier, reason, following)
        return self.answer(self.rungs[-1][1].invoke(input, config, **kwargs))

    async def _aclimb(
        self,
        input: LanguageModelInput,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Any:
        for (tier, runnable), (following, _) in zip(self.rungs, self.rungs[1:], strict=False):
            try:
                output = await runnable.ainvoke(input, config, **kwargs)
            except Exception as exc:  # any provider error: the next tier can still answer
                logger.info("the %s tier failed (%s): asking the %s tier", tier, exc, following)
                continue
            if (reason := self.reject(output)) is None:
                return self.answer(output)
            logger.info("the %s tier's answer is rejected (%s): asking the %s tier", tier, reason, following)
        return self.answer(await self.rungs[-1][1].ainvoke(input, config, **kwargs))


class CascadeChatModel(BaseChatModel):
    """A chat model over tiers: the cheapest answers, the next one up only when that answer is rejected.

    ``tiers`` maps each tier to its model, cheapest first (each model carries its tier in its metadata:
    :meth:`LLMTiers.model_for` builds them). An answer is rejected when its call fails, when
    ``validator`` (called with the reply, or the parsed value of a ``with_structured_output`` call)
    returns False, when a structured answer does not parse, or when its measured confidence is below
    ``min_confidence``.
    """

    tiers: dict[Tier, BaseChatModel] = Field(min_length=1)
    validator: Callable[[Any], bool] | None = None
    min_confidence: float = Field(default=DEFAULT_MIN_CONFIDENCE, ge=0.0, le=1.0)

    @property
    def _llm_type(self) -> str:
        return "agentgraph-tier-cascade"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tiers": {tier: llm_name(model) for tier, model in self.tiers.items()}}

    @property
    def model_name(self) -> str:
        """The tiers' models, cheapest first (what a decision record names as the model)."""
        return " > ".join(llm_name(model) for model in self.tiers.values())

    def _cascade(self, rungs: Iterable[tuple[Tier, Runnable[LanguageModelInput, Any]]]) -> TierCascade:
        return TierCascade(list(rungs), lambda reply: rejection(reply, reply, self.validator, self.min_confidence))

    # The Runnable interface (invoke, and stream and batch through it) runs the cascade without a model run of
    # its own, so callbacks and the trace store see exactly the calls the tiers made, inside a chain run.
    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:  # fmt: skip
        return cast(AIMessage, self._cascade(self.tiers.items()).invoke(input, config, stop=stop, **kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:  # fmt: skip
        return cast(AIMessage, await self._cascade(self.tiers.items()).ainvoke(input, config, stop=stop, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Only generate() gets here (invoke is overridden): it has opened a model run of the cascade's own, and a
        # trace would count the tiers' calls twice.
        raise NotImplementedError("a CascadeChatModel answers through invoke, ainvoke, stream or batch, not generate()")

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> TierCascade:
        return self._cascade(
            (tier, model.bind_tools(tools, tool_choice=tool_choice, **kwargs)) for tier, model in self.tiers.items()
        )

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> TierCascade:
        """Each tier's structured output, asked with ``include_raw`` so that an answer that does not parse is
        rejected and the next tier asked rather than the error raised."""

        def reject(reply: dict[str, Any]) -> str | None:
            if reply["parsing_error"] is not None:
                return f"it does not parse: {reply['parsing_error']}"
            if reply["parsed"] is None:
                return "it holds no structured answer"
            return rejection(reply["parsed"], reply["raw"], self.validator, self.min_confidence)

        def answer(reply: dict[str, Any]) -> Any:
            if include_raw:
                return reply
            if reply["parsing_error"] is not None:  # what a model's own structured output raises
                raise reply["parsing_error"]
            return reply["parsed"]

        rungs = [
            (tier, model.with_structured_output(schema, include_raw=True, **kwargs))
            for tier, model in self.tiers.items()
        ]
        return TierCascade(rungs, reject, answer)


class LLMTiers(BaseModel):
    """The LLM tiers' models and the table from step type to tier (see the module's docstring).

    Args:
        models: each configured tier's chat model; a tier left out is served by its neighbour.
        steps: step type to tier; a step type not listed is served by ``default_tier``.
        default_tier: the tier of a step type ``steps`` does not list.
        cascades: step type to the highest tier a rejected answer climbs to; a step not listed asks one tier.
        min_confidence: a cascade rejects an answer whose mean token probability is below this.
    """

    models: dict[Tier, BaseChatModel] = Field(default_factory=dict)
    steps: dict[str, Tier] = Field(default_factory=lambda: dict(DEFAULT_STEPS))
    default_tier: Tier = "frontier"
    cascades: dict[str, Tier] = Field(default_factory=lambda: dict(DEFAULT_CASCADES))
    min_confidence: float = Field(default=DEFAULT_MIN_CONFIDENCE, ge=0.0, le=1.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LLMTiers:
        """The tiers the environment configures (``environ``, default ``os.environ``); see the module's docstring.

        Raises :class:`~agentgraph.errors.ConfigError` when a table names an unknown tier or a value is malformed.
        """
        env = os.environ if environ is None else environ
        models = {}
        for tier, settings in tier_settings(env).items():
            model = default_llm(settings)
            if model is not None and env.get(f"AGENTGRAPH_LLM_{tier.upper()}_LOGPROBS", "").lower() in ("1", "true"):
                # A cascade can measure only the confidence of a tier whose provider was asked for log-probs.
                model = model.model_copy(update={"logprobs": True})
            if model is not None:
                models[tier] = model
        values: dict[str, Any] = {
            "models": models,
            "steps": DEFAULT_STEPS | _table(env, "AGENTGRAPH_LLM_STEPS"),
            "cascades": DEFAULT_CASCADES | _table(env, "AGENTGRAPH_LLM_CASCADES"),
        }
        if env.get("AGENTGRAPH_LLM_DEFAULT_TIER"):
            values["default_tier"] = env["AGENTGRAPH_LLM_DEFAULT_TIER"]
        if env.get("AGENTGRAPH_LLM_MIN_CONFIDENCE"):
            values["min_confidence"] = env["AGENTGRAPH_LLM_MIN_CONFIDENCE"]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"the LLM tiers in the environment are not valid: {exc}") from exc

    def tier_for(self, step_type: str) -> Tier | None:
        """The configured tier that first answers a step of ``step_type``; None when no tier has a model."""
        return self._serving(self.steps.get(step_type, self.default_tier))

    def model_for(
        self,
        step_type: str,
        *,
        validator: Callable[[Any], bool] | None = None,
        min_confidence: float | None = None,
    ) -> BaseChatModel | None:
        """The chat model for a step of ``step_type``, tagged with its tier; None when no tier has a model.

        A step in ``cascades`` whose tiers resolve to more than one model gets a :class:`CascadeChatModel`
        (``validator`` and ``min_confidence``, default the table's, judge its answers); any other step gets
        its tier's model itself.
        """
        first = self.tier_for(step_type)
        if first is None:
            return None
        start = TIERS.index(self.steps.get(step_type, self.default_tier))
        ceiling = max(start, TIERS.index(self.cascades.get(step_type, TIERS[start])))
        # Tiers without a model resolve to a neighbour: a single model makes no cascade, whatever the table says.
        climbed = list(dict.fromkeys(self._serving(tier) or first for tier in TIERS[start : ceiling + 1]))
        if len(climbed) == 1:
            return self._tagged(climbed[0])
        return CascadeChatModel(
            tiers={tier: self._tagged(tier) for tier in climbed},
            validator=validator,
            min_confidence=self.min_confidence if min_confidence is None else min_confidence,
        )

    def _serving(self, tier: Tier) -> Tier | None:
        """``tier`` when it has a model, else the next configured tier above it, else the nearest below."""
        index = TIERS.index(tier)
        above, below = TIERS[index:], TIERS[:index][::-1]
        return next((candidate for candidate in (*above, *below) if candidate in self.models), None)

    def _tagged(self, tier: Tier) -> BaseChatModel:
        # The model's own metadata rides on every run it makes, structured-output and tool-bound calls included,
        # where a with_config binding would be lost to with_structured_output.
        model = self.models[tier]
        return model.model_copy(update={"metadata": {**(model.metadata or {}), TIER_KEY: tier}})


def tier_settings(environ: Mapping[str, str] | None = None) -> dict[Tier, LLMSettings]:
    """Each tier's :class:`~agentgraph.llm.LLMSettings` from the environment (a tier without a model too)."""
    env = (os.environ if environ is None else environ).get
    shared_url = env("AGENTGRAPH_LLM_BASE_URL") or env("OPENAI_BASE_URL")
    shared_key = env("AGENTGRAPH_LLM_API_KEY") or env("OPENAI_API_KEY")
    settings = {}
    for tier in TIERS:
        prefix = f"AGENTGRAPH_LLM_{tier.upper()}"
        # The frontier tier is today's single LLM, so a setup that names only AGENTGRAPH_LLM_MODEL keeps working.
        model = env(f"{prefix}_MODEL") or (env("AGENTGRAPH_LLM_MODEL") if tier == "frontier" else None)
        key = env(f"{prefix}_API_KEY") or shared_key
        settings[tier] = LLMSettings(
            model=model, base_url=env(f"{prefix}_BASE_URL") or shared_url, api_key=SecretStr(key) if key else None
        )
    return settings


def _table(environ: Mapping[str, str], name: str) -> dict[str, str]:
    """``step=tier`` pairs, comma-separated, from the variable ``name`` (the tiers are validated by the caller)."""
    table = {}
    for entry in filter(None, (part.strip() for part in environ.get(name, "").split(","))):
        step, equals, tier = entry.partition("=")
        if not equals or not step.strip() or not tier.strip():
            raise ConfigError(f"{name}: {entry!r} is not step=tier (tiers: {', '.join(TIERS)})")
        table[step.strip()] = tier.strip()
    return table
