"""The embedded backend: the SLM in-process with transformers (the default; nothing to start).

Labels are scored exactly (one prompt pass, then every label continuation in one
batch over a shared KV cache) and JSON is decoded under an xgrammar grammar
compiled from the pydantic model's JSON schema, so neither can leave its
constraint. The async calls (``achoose``, ``astructured``, ``agenerate``) run the
same work in worker threads, off the event loop.

Concurrent calls are batched: those that arrive while the model is busy (or within
``batch_window_ms`` of each other) run as one padded forward pass, every row under
its own grammar, so throughput grows with concurrency instead of queueing. A row
is answered as soon as it ends; rows never see each other (masks and positions keep
each one as if alone), so an answer does not depend on what shares its batch.

Example:
    >>> from pydantic import BaseModel
    >>> from agentgraph.slm import TransformersSLM
    >>> class Order(BaseModel):
    ...     order_id: str
    >>> slm = TransformersSLM()
    >>> slm.structured("Where is order 10001?", Order).value.order_id
    '10001'
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from agentgraph.slm.base import SLM, ChatMessage, GenerationResult, TokenLogprob, Usage
from agentgraph.slm.batching import CallBatcher, Deliver
from agentgraph.slm.models import load_causal_lm, model_and_adapter

if TYPE_CHECKING:
    import xgrammar
    from transformers import BatchEncoding


class TransformersSLM(SLM):
    """A causal LM run in this process on CPU (or ``device``), greedy and thread-safe.

    Args:
        model: a local transformers model folder, a LoRA adapter folder (loaded onto the base model
            it names and merged into it), or None for the packaged SmolLM2-135M-Instruct.
        device: torch device string.
        max_context_tokens: prompt plus output budget; defaults to the model's context length.
        num_threads: torch intra-op threads (None keeps torch's default).
        max_batch_size: the most concurrent calls one forward pass serves (1: one call at a time).
        batch_window_ms: how long a call waits for others to share its batch when the model is idle.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        max_context_tokens: int | None = None,
        num_threads: int | None = None,
        max_batch_size: int = 16,
        batch_window_ms: float = 2.0,
    ) -> None:
        super().__init__()
        import torch
        import xgrammar
        from transformers import AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.folder, self.adapter = model_and_adapter(model)
        self.model_name = (self.adapter or self.folder).name
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        # float32 on CPU: bf16 matmuls are slower there and the model is small.
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = load_causal_lm(self.folder, self.adapter, dtype=dtype).to(device).eval()
        self.device = device
        self.max_context_tokens = max_context_tokens or self.model.config.max_position_embeddings
        self._stop_ids = _stop_token_ids(self.model.generation_config, self.tokenizer)
        tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.model.config.vocab_size, stop_token_ids=sorted(self._stop_ids)
        )
        self._grammars = xgrammar.GrammarCompiler(tokenizer_info)
        model_lock, window_s = threading.Lock(), batch_window_ms / 1000
        self._scoring: CallBatcher[_ScoringCall, tuple[dict[str, float], Usage]] = CallBatcher(
            self._score_batch, lock=model_lock, max_batch_size=max_batch_size, window_s=window_s
        )
        self._decoding: CallBatcher[_DecodingCall, GenerationResult] = CallBatcher(
            self._decode_batch, lock=model_lock, max_batch_size=max_batch_size, window_s=window_s
        )

    def tokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=True,
        )
        # tokenize=True with return_dict=True returns a BatchEncoding; the stub's union covers every mode.
        return list(cast("BatchEncoding", encoded)["input_ids"])

    def _score_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        return self._scoring.submit(_ScoringCall(prefix, dict(continuations)))

    def _generate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        import xgrammar

        # Compact JSON, the grammar vLLM compiles with disable_any_whitespace: with free
        # whitespace a small model can emit blanks until max_tokens. The compiler caches
        # each schema's grammar, so only its first call compiles.
        grammar = self._grammars.compile_json_schema(json_schema, any_whitespace=False, separators=(",", ":"))
        return self._decoding.submit(_DecodingCall(prompt_ids, max_tokens, [], xgrammar.GrammarMatcher(grammar)))

    def _generate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        return self._decoding.submit(_DecodingCall(prompt_ids, max_tokens, stop, None))

    def _prefill(self, prompts: Sequence[list[int]], **forward: object):
        """One forward pass over ``prompts`` left-padded to one width: (output, attention mask, next positions).

        Left padding puts every prompt's last token in the last column, where decoding goes on; the
        mask hides the padding and the positions count only real tokens, so each row reads as if alone.
        """
        import torch

        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            **forward,
        )
        return output, mask, mask.sum(dim=1)

    def _score_batch(self, calls: list[_ScoringCall], deliver: Deliver) -> None:
        """Every call's label continuations, scored in two forward passes for the whole batch.

        The prompts run once each; their KV cache is repeated for each of their labels, and every
        label of every call runs as one row of the second pass.
        """
        import torch

        started = time.perf_counter()
        owners = [number for number, call in enumerate(calls) for _ in call.continuations]
        rows = [ids for call in calls for ids in call.continuations.values()]
        width = max(map(len, rows))
        with torch.inference_mode():
            # Only each prompt's last position predicts a label token: the LM head skips the rest.
            first, prompt_mask, prompt_lengths = self._prefill([call.prefix for call in calls], logits_to_keep=1)
            cache = first.cache
            index = torch.tensor(owners)
            cache.reorder_cache(index.to(self.device))
            batch = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            label_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, ids in enumerate(rows):
                batch[row, : len(ids)] = torch.tensor(ids)
                label_mask[row, : len(ids)] = 1
            # Right padding is harmless: a causal model never lets padding influence earlier positions.
            rest = self.model(
                input_ids=batch.to(self.device),
                attention_mask=torch.cat([prompt_mask[index], label_mask], dim=1).to(self.device),
                position_ids=(prompt_lengths[index, None] + torch.arange(width)).to(self.device),
                cache=cache,
            )
        # Position t predicts continuation token t: the prompt's last logits, then the batch's own.
        logits = torch.cat([first.logits[index.to(first.logits.device), -1:, :], rest.logits[:, :-1, :]], dim=1)
        logprobs = (
            torch.log_softmax(logits.float(), dim=-1).gather(2, batch.to(logits.device).unsqueeze(-1)).squeeze(-1)
        )
        latency_ms = (time.perf_counter() - started) * 1000
        row = 0
        for number, call in enumerate(calls):
            scores = {}
            for label, ids in call.continuations.items():
                scores[label] = float(logprobs[row, : len(ids)].sum())
                row += 1
            usage = Usage(
                model=self.model_name,
                latency_ms=latency_ms,
                prompt_tokens=len(call.prefix),
                completion_tokens=max(map(len, call.continuations.values())),
            )
            deliver(number, (scores, usage))

    def _decode_batch(self, calls: list[_DecodingCall], deliver: Deliver) -> None:
        """Greedy decoding of every call at once with a KV cache, each row under its own grammar (if any).

        A row leaves the batch when it ends (an end-of-turn token, a stop string or ``max_tokens``) and
        its caller gets its result at once. Log-probabilities are taken from the raw distribution
        before masking, as vLLM reports them.
        """
        import torch
        import xgrammar

        started = time.perf_counter()
        rows = [_DecodingRow(call) for call in calls]

        def finish(row: _DecodingRow, reason: Literal["stop", "length"]) -> None:
            deliver(calls.index(row.call), self._generation(row, reason, started))

        for row in rows:
            if row.call.max_tokens <= 0:
                finish(row, "length")
        active = [row for row in rows if row.call.max_tokens > 0]
        if not active:
            return
        bitmask = xgrammar.allocate_token_bitmask(len(active), self.model.config.vocab_size)
        with torch.inference_mode():
            output, mask, positions = self._prefill([row.call.prompt_ids for row in active])
            while True:
                logits = output.logits[:, -1, :].float()
                raw = torch.log_softmax(logits, dim=-1)
                matchers = {number: row.call.matcher for number, row in enumerate(active) if row.call.matcher}
                if matchers:
                    logits = logits.cpu()
                    for number, matcher in matchers.items():
                        matcher.fill_next_token_bitmask(bitmask, number)
                    xgrammar.apply_token_bitmask_inplace(logits, bitmask[: len(active)], indices=list(matchers))
                tokens = logits.argmax(dim=-1).tolist()
                kept = []
                for number, (row, token) in enumerate(zip(active, tokens, strict=True)):
                    ended = row.step(token, float(raw[number, token]), self._stop_ids, self.tokenizer)
                    if ended:
                        finish(row, ended)
                    else:
                        kept.append(number)
                if not kept:
                    return
                if len(kept) < len(active):
                    keep = torch.tensor(kept)
                    output.cache.batch_select_indices(keep.to(self.device))
                    mask, positions = mask[keep], positions[keep]
                    active = [active[number] for number in kept]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
                output = self.model(
                    input_ids=torch.tensor([[row.generated[-1]] for row in active], device=self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions[:, None].to(self.device),
                    cache=output.cache,
                    use_cache=True,
                )
                positions = positions + 1

    def _generation(self, row: _DecodingRow, finish_reason: Literal["stop", "length"], started: float):
        # One sequence of ids decodes to one string (the stub's list[str] is for a batch).
        text = cast(str, self.tokenizer.decode(row.generated, skip_special_tokens=True))
        for marker in row.call.stop:
            text = text.split(marker, 1)[0]
        return GenerationResult(
            text=text,
            tokens=[
                TokenLogprob(token=self.tokenizer.decode([t]), logprob=lp)
                for t, lp in zip(row.generated, row.logprobs, strict=True)
            ],
            finish_reason=finish_reason,
            usage=Usage(
                model=self.model_name,
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=len(row.call.prompt_ids),
                completion_tokens=len(row.generated),
            ),
        )


@dataclass(frozen=True)
class _ScoringCall:
    prefix: list[int]
    continuations: dict[str, list[int]]


@dataclass(frozen=True)
class _DecodingCall:
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str]
    matcher: xgrammar.GrammarMatcher | None


class _DecodingRow:
    """One call's progress through a batched decode."""

    def __init__(self, call: _DecodingCall) -> None:
        self.call = call
        self.generated: list[int] = []
        self.logprobs: list[float] = []

    def step(self, token: int, logprob: float, stop_ids: set[int], tokenizer) -> Literal["stop", "length"] | None:
        """Take the greedy ``token``; how the row ended, or None while it goes on."""
        if token in stop_ids:
            return "stop"
        matcher = self.call.matcher
        if matcher is not None and not matcher.accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} it allowed")  # an xgrammar bug, not input
        self.generated.append(token)
        self.logprobs.append(logprob)
        if self.call.stop and any(s in tokenizer.decode(self.generated) for s in self.call.stop):
            return "stop"
        return "length" if len(self.generated) >= self.call.max_tokens else None


def _stop_token_ids(generation_config, tokenizer) -> set[int]:
    """End-of-turn ids: generation_config's eos (an int or a list) and the tokenizer's."""
    configured = generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) if configured is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
