"""The one interface every node uses to talk to a small language model.

Two backends implement it: :class:`~agentgraph.slm.embedded.TransformersSLM`
(in-process, the default) and :class:`~agentgraph.slm.vllm.VLLMSLM` (a vLLM
server). Both share the prompt rendering and label scoring defined here, so the
same model gives the same answers through either.

Every call has an async twin (``achoose``, ``astructured``, ``agenerate``) with the
same arguments and result, for graphs run with ``ainvoke``: the vLLM client awaits
its server, the embedded model runs in a worker thread, so the event loop never waits
on the model.

Example:
    >>> import asyncio
    >>> from agentgraph.slm import load_slm
    >>> slm = load_slm()  # embedded SmolLM2-135M-Instruct
    >>> result = slm.choose("Where is my parcel?", ["track_order", "cancel_order"])
    >>> result.label, round(sum(result.probabilities.values()), 6)
    ('track_order', 1.0)
    >>> asyncio.run(slm.achoose("Where is my parcel?", ["track_order", "cancel_order"])).label
    'track_order'
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentgraph.errors import ContextBudgetExceededError, EmptyInputError, StructuredOutputError
from agentgraph.prompting import render_prompt

ModelT = TypeVar("ModelT", bound=BaseModel)

ChatMessage = Mapping[str, str]
Prompt = str | Sequence[ChatMessage]
"""A user message, or a list of chat messages (``{"role": ..., "content": ...}``)."""

Labels = Sequence[str] | Mapping[str, str]
"""Label strings, or labels mapped to a description of when to pick them."""


class Usage(BaseModel):
    """What one SLM call cost."""

    model: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


class TokenLogprob(BaseModel):
    """One generated token and its log-probability under the raw model distribution."""

    token: str
    logprob: float


class ChoiceResult(BaseModel):
    """A label chosen from a fixed set, with a distribution over every label."""

    label: str
    probabilities: dict[str, float] = Field(description="P(label | prompt), summing to 1 over the label set")
    usage: Usage

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


class GenerationResult(BaseModel):
    """Free text with per-token log-probabilities."""

    text: str
    tokens: list[TokenLogprob]
    finish_reason: Literal["stop", "length"] = Field(description="'length' when max_tokens cut the output")
    usage: Usage

    @property
    def confidence(self) -> float:
        """Geometric mean of the token probabilities (1.0 for an empty output)."""
        if not self.tokens:
            return 1.0
        return math.exp(sum(t.logprob for t in self.tokens) / len(self.tokens))


class StructuredResult(GenerationResult, Generic[ModelT]):
    """A validated pydantic instance produced under constrained decoding."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    value: ModelT


def to_messages(prompt: Prompt, system: str | None = None) -> list[dict[str, str]]:
    """Normalise a prompt into chat messages, with ``system`` first when given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a prompt must end with a user message")
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def require_prompt(prompt: Prompt) -> Prompt:
    """``prompt``, unless the user message it ends with is blank: :class:`EmptyInputError`, before any model call.

    A model asked about nothing still answers (a label read off the listing alone, a greeting), and the answer
    would pass for one about a request.
    """
    if not (to_messages(prompt)[-1].get("content") or "").strip():
        raise EmptyInputError(
            "the prompt is empty (its last user message is blank): there is nothing for the model to answer. "
            "Pass the text to answer; nodes refuse empty input before calling their SLM"
        )
    return prompt


def label_options(labels: Labels) -> dict[str, str | None]:
    """Labels as an ordered ``{label: description or None}``; rejects empty or repeated labels."""
    options: dict[str, str | None] = (
        {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else dict.fromkeys(map(str, labels))
    )
    if isinstance(labels, str) or len(options) < 2:
        raise ValueError("choose() needs at least two distinct labels")
    if len(options) != len(labels):
        raise ValueError("labels must be distinct")
    if any(not label.strip() for label in options):
        raise ValueError("labels must be non-empty strings")
    return options


def choice_messages(
    prompt: Prompt, options: Mapping[str, str | None], system: str | None, *, list_labels: bool = True
) -> list[dict[str, str]]:
    """The prompt with the label list (prompt ``choice``) appended to its last user message (unless not ``list_labels``)."""
    messages = to_messages(prompt, system)
    if not list_labels:
        return messages
    listing = render_prompt("choice", options=options)
    messages[-1]["content"] = f"{messages[-1]['content']}\n\n{listing}"
    return messages


def json_schema_instruction(schema: type[BaseModel]) -> str:
    """The schema-first instruction (prompt ``structured``) for ``schema``."""
    import json

    return render_prompt("structured", schema=json.dumps(schema.model_json_schema(), separators=(",", ":")))


def structured_messages(
    prompt: Prompt, schema: type[BaseModel], system: str | None = None, *, describe_schema: bool = True
) -> list[dict[str, str]]:
    """The chat messages :meth:`SLM.structured` sends: ``system``, then the schema-first instruction unless
    ``describe_schema`` is False (a model fine-tuned on the schema knows it; the grammar enforces it either way)."""
    instruction = json_schema_instruction(schema) if describe_schema else None
    if system and instruction:
        return to_messages(prompt, f"{system}\n\n{instruction}")
    return to_messages(prompt, system or instruction)


def label_suffix_probes(label: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The two conversations whose renderings differ by ``label`` as an assistant turn: a probe, and it answered."""
    probe = [{"role": "user", "content": "?"}]
    return probe, [*probe, {"role": "assistant", "content": label}]


def label_suffix(label: str, probe_ids: list[int], answered_ids: list[int]) -> list[int]:
    """The tokens ``answered_ids`` adds to ``probe_ids`` (see :func:`label_suffix_probes`): ``label``'s reply."""
    if answered_ids[: len(probe_ids)] != probe_ids or len(answered_ids) == len(probe_ids):
        raise ValueError(f"the chat template does not render label {label!r} as a plain assistant turn")
    return answered_ids[len(probe_ids) :]


def normalise_scores(label_logprobs: Mapping[str, float]) -> dict[str, float]:
    """Softmax of per-label sequence log-probabilities: P(label | prompt, label in set)."""
    top = max(label_logprobs.values())
    weights = {label: math.exp(lp - top) for label, lp in label_logprobs.items()}
    total = sum(weights.values())
    return {label: w / total for label, w in weights.items()}


def validate_structured(schema: type[ModelT], text: str, *, usage: Usage | None = None) -> ModelT:
    """Validate constrained output against ``schema``; a failure is a typed error carrying the text (and
    ``usage``, what the call that wrote it cost)."""
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        raise StructuredOutputError(schema, text, exc, usage=usage) from exc


class TokenCounts(TypedDict, total=False):
    """A decision's small-model tokens, as keyword arguments of a decision record (none when no SLM was asked)."""

    prompt_tokens: int
    completion_tokens: int


def tokens_of(usages: Iterable[Usage | None]) -> TokenCounts:
    """The prompt and completion tokens of SLM calls, summed, as a decision records them (nothing for no call).

    Example:
        >>> tokens_of([Usage(model="m", latency_ms=1.0, prompt_tokens=120, completion_tokens=9), None])
        {'prompt_tokens': 120, 'completion_tokens': 9}
        >>> tokens_of([None])
        {}
    """
    made = [usage for usage in usages if usage is not None]
    if not made:
        return {}
    return {
        "prompt_tokens": sum(usage.prompt_tokens for usage in made),
        "completion_tokens": sum(usage.completion_tokens for usage in made),
    }


def choice_result(label_logprobs: Mapping[str, float], usage: Usage) -> ChoiceResult:
    """The label scored highest, with the scores normalised over the label set."""
    probabilities = normalise_scores(label_logprobs)
    label = max(probabilities, key=probabilities.__getitem__)
    return ChoiceResult(label=label, probabilities=probabilities, usage=usage)


def structured_result(schema: type[ModelT], generation: GenerationResult, max_tokens: int) -> StructuredResult[ModelT]:
    """``generation`` validated as ``schema``; an output cut at ``max_tokens`` is a :class:`StructuredOutputError`."""
    if generation.finish_reason == "length":
        raise StructuredOutputError(
            schema,
            generation.text,
            ValueError(f"the output was cut at max_tokens={max_tokens}; raise it"),
            usage=generation.usage,
        )
    value = validate_structured(schema, generation.text, usage=generation.usage)
    # Parametrized at run time with the caller's schema, so ``value`` validates and dumps as that model; mypy
    # takes a subscript by a variable for a type expression.
    return StructuredResult[schema](value=value, **generation.model_dump())  # type: ignore[valid-type]


class SLM(ABC):
    """A small language model behind one contract.

    Every method is deterministic (greedy decoding) and thread-safe; every
    result carries :class:`Usage` (latency, model name, token counts). A blank
    prompt is refused (:func:`require_prompt`).

    Each call has an async twin taking the same arguments and giving the same
    result; a backend implements the sync hooks, and the async hooks default to
    running them in a worker thread (a backend with an async client overrides them).
    """

    model_name: str
    max_context_tokens: int

    def __init__(self) -> None:
        self._suffix_cache: dict[str, list[int]] = {}

    def choose(
        self, prompt: Prompt, labels: Labels, *, system: str | None = None, list_labels: bool = True
    ) -> ChoiceResult:
        """Pick one of ``labels``; the answer can never leave the label set.

        Each label is scored as the full assistant reply (label tokens and the
        end-of-turn token) after the prompt; ``probabilities`` is the softmax of
        those sequence log-probabilities and ``label`` its argmax. With
        ``list_labels=False`` the labels are scored without being listed in the
        prompt: for a model fine-tuned on its label set (a distilled router),
        which then reads a prompt a few times shorter.
        """
        options = label_options(labels)
        messages = choice_messages(require_prompt(prompt), options, system, list_labels=list_labels)
        prefix = self.tokenize_chat(messages, add_generation_prompt=True)
        suffixes = {label: self._label_suffix(label) for label in options}
        self.check_budget(len(prefix) + max(map(len, suffixes.values())))
        return choice_result(*self._score_continuations(prefix, suffixes))

    async def achoose(
        self, prompt: Prompt, labels: Labels, *, system: str | None = None, list_labels: bool = True
    ) -> ChoiceResult:
        """:meth:`choose`, awaited."""
        options = label_options(labels)
        messages = choice_messages(require_prompt(prompt), options, system, list_labels=list_labels)
        prefix = await self.atokenize_chat(messages, add_generation_prompt=True)
        suffixes = dict(zip(options, await asyncio.gather(*map(self._alabel_suffix, options)), strict=True))
        self.check_budget(len(prefix) + max(map(len, suffixes.values())))
        return choice_result(*await self._ascore_continuations(prefix, suffixes))

    def structured(
        self,
        prompt: Prompt,
        schema: type[ModelT],
        *,
        system: str | None = None,
        max_tokens: int = 256,
        describe_schema: bool = True,
    ) -> StructuredResult[ModelT]:
        """Produce an instance of ``schema`` under JSON-schema-constrained decoding.

        The schema is stated in the system message (schema-first prompting) and
        enforced by the decoder. ``describe_schema=False`` leaves the statement
        out, for a model distilled on the schema (``agentgraph distill train
        --role extract``), which learnt it. A value the grammar cannot express
        (a custom validator, say) raises :class:`~agentgraph.errors.StructuredOutputError`.
        """
        messages = structured_messages(require_prompt(prompt), schema, system, describe_schema=describe_schema)
        prompt_ids = self.tokenize_chat(messages, add_generation_prompt=True)
        self.check_budget(len(prompt_ids) + max_tokens)
        generation = self._generate_json(messages, prompt_ids, schema.model_json_schema(), max_tokens)
        return structured_result(schema, generation, max_tokens)

    async def astructured(
        self,
        prompt: Prompt,
        schema: type[ModelT],
        *,
        system: str | None = None,
        max_tokens: int = 256,
        describe_schema: bool = True,
    ) -> StructuredResult[ModelT]:
        """:meth:`structured`, awaited."""
        messages = structured_messages(require_prompt(prompt), schema, system, describe_schema=describe_schema)
        prompt_ids = await self.atokenize_chat(messages, add_generation_prompt=True)
        self.check_budget(len(prompt_ids) + max_tokens)
        generation = await self._agenerate_json(messages, prompt_ids, schema.model_json_schema(), max_tokens)
        return structured_result(schema, generation, max_tokens)

    def generate(
        self,
        prompt: Prompt,
        *,
        system: str | None = None,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
    ) -> GenerationResult:
        """Generate free text greedily, with the log-probability of every token."""
        messages = to_messages(require_prompt(prompt), system)
        prompt_ids = self.tokenize_chat(messages, add_generation_prompt=True)
        self.check_budget(len(prompt_ids) + max_tokens)
        return self._generate_text(messages, prompt_ids, max_tokens, list(stop))

    async def agenerate(
        self,
        prompt: Prompt,
        *,
        system: str | None = None,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
    ) -> GenerationResult:
        """:meth:`generate`, awaited."""
        messages = to_messages(require_prompt(prompt), system)
        prompt_ids = await self.atokenize_chat(messages, add_generation_prompt=True)
        self.check_budget(len(prompt_ids) + max_tokens)
        return await self._agenerate_text(messages, prompt_ids, max_tokens, list(stop))

    def count_tokens(self, prompt: Prompt, *, system: str | None = None) -> int:
        """Tokens the prompt takes once the chat template is applied."""
        return len(self.tokenize_chat(to_messages(prompt, system), add_generation_prompt=True))

    def check_budget(self, tokens: int) -> None:
        if tokens > self.max_context_tokens:
            raise ContextBudgetExceededError(tokens, self.max_context_tokens)

    def _label_suffix(self, label: str) -> list[int]:
        """Token ids of ``label`` as a complete assistant turn (content plus end-of-turn).

        Found by difference of two chat-template renderings (:func:`label_suffix`), so it
        holds for any template; independent of the prompt, hence cached. Two threads that
        miss the cache at once both render it and store the same ids: no lock is needed.
        """
        if label not in self._suffix_cache:
            probe, answered = label_suffix_probes(label)
            ids = label_suffix(
                label,
                self.tokenize_chat(probe, add_generation_prompt=True),
                self.tokenize_chat(answered, add_generation_prompt=False),
            )
            self._suffix_cache.setdefault(label, ids)
        return self._suffix_cache[label]

    async def _alabel_suffix(self, label: str) -> list[int]:
        """:meth:`_label_suffix`, awaited (both renderings at once)."""
        if label not in self._suffix_cache:
            probe, answered = label_suffix_probes(label)
            probe_ids, answered_ids = await asyncio.gather(
                self.atokenize_chat(probe, add_generation_prompt=True),
                self.atokenize_chat(answered, add_generation_prompt=False),
            )
            self._suffix_cache.setdefault(label, label_suffix(label, probe_ids, answered_ids))
        return self._suffix_cache[label]

    @abstractmethod
    def tokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template."""

    async def atokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        """:meth:`tokenize_chat`, run in a worker thread."""
        return await asyncio.to_thread(self.tokenize_chat, messages, add_generation_prompt=add_generation_prompt)

    @abstractmethod
    def _score_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        """Sum of log P(continuation tokens | prefix) for each continuation."""

    @abstractmethod
    def _generate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        """Greedy generation constrained to ``json_schema``."""

    @abstractmethod
    def _generate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        """Greedy unconstrained generation."""

    async def _ascore_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        """:meth:`_score_continuations`, run in a worker thread."""
        return await asyncio.to_thread(self._score_continuations, prefix, continuations)

    async def _agenerate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        """:meth:`_generate_json`, run in a worker thread."""
        return await asyncio.to_thread(self._generate_json, messages, prompt_ids, json_schema, max_tokens)

    async def _agenerate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        """:meth:`_generate_text`, run in a worker thread."""
        return await asyncio.to_thread(self._generate_text, messages, prompt_ids, max_tokens, stop)
