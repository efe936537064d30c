"""The context pruner: a cross-encoder scores retrieved chunks against the query and keeps only what earns its tokens.

Chunks are scored in one batch by a :class:`Reranker` (any sentence-transformers
cross-encoder, by local path or cached model name), then walked best first:

- ``below_min_score``: scored under ``min_score``;
- ``duplicate``: a near copy (word-set Jaccard at or over ``dedupe_threshold``)
  of a chunk already kept;
- ``beyond_top_k``: ``top_k`` chunks are already kept;
- ``over_budget``: would take the kept chunks over ``token_budget`` (a smaller,
  lower-scored chunk may still fit after it);
- ``empty``: no text at all.

The kept chunks (with their scores, best first) go to the state; the decision
record lists every kept and every dropped chunk with its reason, so nothing is
lost without a trace. No cross-encoder ships on PyPI: train one with
:mod:`agentgraph.cross_encoder`.

Example:
    >>> from langgraph.graph import START, StateGraph
    >>> from agentgraph.graphs.customer_support import support_reranker_folder
    >>> from agentgraph.nodes.context_pruner import ContextPrunerState, Reranker, create_context_pruner
    >>> pruner = create_context_pruner(Reranker(support_reranker_folder()), top_k=2, token_budget=200)
    >>> builder = StateGraph(ContextPrunerState)
    >>> _ = builder.add_node("prune", pruner).add_edge(START, "prune")
    >>> result = builder.compile().invoke({"query": "I want my money back", "chunks": [
    ...     "To request a refund, open Orders and choose Request refund.",
    ...     "To request a refund, open Orders and choose Request refund.",
    ...     "Our newsletter comes out every Monday.",
    ... ]})
    >>> sorted(chunk.index for chunk in result["context"])
    [0, 2]
    >>> [(d["index"], d["reason"], d["duplicate_of"]) for d in result["decisions"][0].output["dropped"]]
    [(1, 'duplicate', 0)]
"""

from __future__ import annotations

import copy
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.documents import Document
from pydantic import BaseModel, Field

from agentgraph.errors import ModelNotFoundError
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult
from agentgraph.preparation import loading_quietly
from agentgraph.records.decisions import DecisionLog, DecisionState
from agentgraph.slm.batching import CallBatcher, Deliver
from agentgraph.text import clean_text

if TYPE_CHECKING:
    from sentence_transformers.cross_encoder import CrossEncoder

DropReason = Literal["empty", "below_min_score", "duplicate", "beyond_top_k", "over_budget"]
Chunk = str | Document | Mapping[str, Any]
"""A retrieved chunk: plain text, a langchain ``Document``, or a mapping with ``"text"`` (and any metadata)."""

_WORD = re.compile(r"\w+")


class Reranker:
    """A cross-encoder that scores ``(query, passage)`` pairs, loaded from a local path or a cached model name.

    ``model`` is a folder (for instance one made by
    :func:`agentgraph.cross_encoder.train_cross_encoder`) or a Hugging Face
    name such as ``cross-encoder/ms-marco-MiniLM-L-6-v2``, which must already
    be in the local Hugging Face cache: nothing is downloaded unless
    ``local_files_only=False`` is passed on purpose. Scores are on the model's
    output scale: a probability in [0, 1] for a one-logit model with the
    default sigmoid, which is what ``min_score`` is compared with. ``model`` may
    also be a function that returns one: it is called on the first score or
    count, once, so a reranker that is trained on first use
    (:func:`agentgraph.cross_encoder.cached_cross_encoder`) costs nothing until a
    request needs it.

    Calls from several threads at once (a graph serving concurrent requests) are
    scored as one batch (:class:`~agentgraph.slm.batching.CallBatcher`): the pairs
    of every query in flight go through the model together, up to
    ``max_batch_size`` queries gathered for ``batch_window_ms``, instead of each
    thread running the model beside the others on the same cores.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Callable[[], str | os.PathLike[str]],
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        local_files_only: bool = True,
        max_batch_size: int = 16,
        batch_window_ms: float = 2.0,
    ) -> None:
        self.batch_size = batch_size
        self._source = model
        self._options: dict[str, Any] = {
            "device": device,
            "max_length": max_length,
            "local_files_only": local_files_only,
        }
        self._loading = threading.Lock()
        self._model: CrossEncoder | None = None
        self._model_name = ""
        self._scoring: CallBatcher[tuple[str, list[str]], list[float]] = CallBatcher(
            self._score_batch, lock=threading.Lock(), max_batch_size=max_batch_size, window_s=batch_window_ms / 1000
        )
        self._counting = threading.Lock()
        if not callable(model):
            self._loaded()

    @property
    def model_name(self) -> str:
        """The folder or name the model was loaded from."""
        self._loaded()
        return self._model_name

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage, in the order given."""
        if not passages:
            return []
        return self._scoring.submit((query, list(passages)))

    def _score_batch(self, requests: list[tuple[str, list[str]]], deliver: Deliver[list[float]]) -> None:
        pairs = [(query, passage) for query, passages in requests for passage in passages]
        scores = self._loaded().predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        start = 0
        for row, (_, passages) in enumerate(requests):
            deliver(row, [float(score) for score in scores[start : start + len(passages)]])
            start += len(passages)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the reranker's tokenizer (no special tokens)."""
        self._loaded()
        with self._counting:
            return len(self._counting_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _loaded(self) -> CrossEncoder:
        with self._loading:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> CrossEncoder:
        from sentence_transformers import CrossEncoder

        name = str(self._source() if callable(self._source) else self._source)
        try:
            with loading_quietly():
                model = CrossEncoder(name, **self._options)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load the cross-encoder {name!r}: {exc}. Pass a local model folder "
                "(train one with agentgraph.cross_encoder.train_cross_encoder) or a model already in the "
                "Hugging Face cache."
            ) from exc
        # A tokenizer of its own for counting: scoring sets the model's tokenizer up for padding and truncation
        # while it runs, and a fast tokenizer used meanwhile from another thread raises "Already borrowed".
        self._counting_tokenizer = copy.deepcopy(model.tokenizer)
        self._model_name = name
        return model


class KeptChunk(BaseModel):
    """A chunk that made it into the context."""

    index: int = Field(description="its position in the input chunks")
    text: str
    score: float
    tokens: int
    metadata: dict[str, Any] = Field(default_factory=dict)


class DroppedChunk(BaseModel):
    """A chunk left out, and why."""

    index: int
    score: float | None = Field(description="None for an empty chunk, which is never scored")
    reason: DropReason
    duplicate_of: int | None = Field(default=None, description="the kept chunk it repeats, for a duplicate")


class PruneSettings(BaseModel):
    """What survives pruning; None switches a criterion off."""

    top_k: int | None = Field(default=5, ge=1)
    min_score: float | None = None
    dedupe_threshold: float | None = Field(default=0.9, gt=0.0, le=1.0, description="word-set Jaccard similarity")
    token_budget: int | None = Field(default=None, ge=1)


class ContextPrunerState(DecisionState, total=False):
    """The default keys of :func:`create_context_pruner`; any state with those keys works."""

    query: str
    chunks: list[Chunk]
    context: list[KeptChunk]


def word_set(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def prune_scored(
    texts: Sequence[str],
    scores: Sequence[float | None],
    settings: PruneSettings,
    count_tokens: Callable[[str], int],
) -> tuple[list[KeptChunk], list[DroppedChunk]]:
    """Apply ``settings`` to scored chunks (``None`` marks an empty, unscored one); kept chunks come best first.

    Chunks are visited by falling score (ties keep input order), so a
    duplicate loses to its better-scored copy and the budget goes to the
    best chunks first.
    """
    kept: list[KeptChunk] = []
    kept_words: list[frozenset[str]] = []
    dropped = [DroppedChunk(index=i, score=None, reason="empty") for i, s in enumerate(scores) if s is None]
    used_tokens = 0
    scored = [(index, float(score)) for index, score in enumerate(scores) if score is not None]
    for index, score in sorted(scored, key=lambda pair: -pair[1]):
        words = word_set(texts[index])
        duplicate_of = (
            next(
                (
                    k.index
                    for k, w in zip(kept, kept_words, strict=True)
                    if jaccard(words, w) >= settings.dedupe_threshold
                ),
                None,
            )
            if settings.dedupe_threshold is not None
            else None
        )
        reason: DropReason | None = None
        if settings.min_score is not None and score < settings.min_score:
            reason = "below_min_score"
        elif duplicate_of is not None:
            reason = "duplicate"
        elif settings.top_k is not None and len(kept) >= settings.top_k:
            reason = "beyond_top_k"
        tokens = count_tokens(texts[index]) if reason is None else 0
        if reason is None and settings.token_budget is not None and used_tokens + tokens > settings.token_budget:
            reason = "over_budget"
        if reason is not None:
            dropped.append(DroppedChunk(index=index, score=score, reason=reason, duplicate_of=duplicate_of))
            continue
        kept.append(KeptChunk(index=index, text=texts[index], score=score, tokens=tokens))
        kept_words.append(words)
        used_tokens += tokens
    return kept, sorted(dropped, key=lambda d: d.index)


def chunk_text_and_metadata(chunk: Chunk, index: int) -> tuple[str, dict[str, Any]]:
    if isinstance(chunk, str):
        return clean_text(chunk), {}
    if isinstance(chunk, Document):
        return clean_text(chunk.page_content), dict(chunk.metadata)
    if isinstance(chunk, Mapping) and isinstance(chunk.get("text"), str):
        return clean_text(chunk["text"]), {k: v for k, v in chunk.items() if k != "text"}
    raise TypeError(
        f"chunk {index} is a {type(chunk).__name__}; give text, a langchain Document or a mapping with a 'text' string"
    )


def create_context_pruner(
    reranker: Reranker,
    *,
    top_k: int | None = 5,
    min_score: float | None = None,
    dedupe_threshold: float | None = 0.9,
    token_budget: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    query_key: str = "query",
    chunks_key: str = "chunks",
    output_key: str = "context",
    name: str = "context_pruner",
    decision_log: DecisionLog | None = None,
) -> ControlNode:
    """A node that reranks ``state[chunks_key]`` against ``state[query_key]`` and writes the survivors to ``output_key``.

    Tokens are counted with ``count_tokens`` (default: the reranker's
    tokenizer); count with the tokenizer of the model that will read the
    context when the budget is that model's. An empty query raises
    :class:`~agentgraph.errors.EmptyInputError` after a ``rejected`` record is
    logged; no chunks is a valid input that keeps nothing. Returns
    ``{output_key: [KeptChunk], "decisions": [Decision]}``.
    """
    settings = PruneSettings(
        top_k=top_k, min_score=min_score, dedupe_threshold=dedupe_threshold, token_budget=token_budget
    )
    counter = count_tokens or reranker.count_tokens

    def prune_chunks(call: NodeCall) -> NodeResult:
        query = call.value
        chunks = call.state.get(chunks_key)
        if chunks is None or isinstance(chunks, str | Mapping) or not isinstance(chunks, Sequence):
            raise TypeError(f"state[{chunks_key!r}] must be a list of chunks, not {type(chunks).__name__}")
        parsed = [chunk_text_and_metadata(chunk, i) for i, chunk in enumerate(chunks)]
        texts = [text for text, _ in parsed]
        scorable = [i for i, text in enumerate(texts) if text.strip()]
        scores: list[float | None] = [None] * len(texts)
        for index, score in zip(scorable, reranker.score(query, [texts[i] for i in scorable]), strict=True):
            scores[index] = score
        kept, dropped = prune_scored(texts, scores, settings, counter)
        for chunk in kept:
            chunk.metadata = parsed[chunk.index][1]
        return NodeResult(
            {output_key: kept},
            input={"query": query, "chunks": len(texts)},
            output={
                "kept": [{"index": c.index, "score": c.score, "tokens": c.tokens} for c in kept],
                "dropped": [d.model_dump() for d in dropped],
            },
            strategy="cross_encoder",
            outcome="ok" if kept else "nothing_kept",
            model=reranker.model_name,
            metadata={"settings": settings.model_dump(), "tokens_kept": sum(c.tokens for c in kept)},
        )

    return ControlNode(
        prune_chunks, name=name, kind="prune", input_key=query_key, what="query", decision_log=decision_log
    )
