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

A prompt is prefilled only from where it leaves the recent prompts it begins like:
the KV cache of the last few prompts is kept (``prefix_cache_prompts``), and the
instructions a node sends with every call (its system prompt, its schema) are read
once, not on every call.

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

from agentgraph.errors import ConfigError
from agentgraph.slm.base import SLM, ChatMessage, GenerationResult, TokenLogprob, Usage
from agentgraph.slm.batching import CallBatcher, Deliver
from agentgraph.slm.models import cpu_computes_bf16, load_causal_lm, model_and_adapter

if TYPE_CHECKING:
    import torch
    import xgrammar
    from transformers import BatchEncoding, DynamicCache


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
        prefix_cache_prompts: how many recent prompts' KV caches are kept for the prompts that begin like
            them (0: every prompt is prefilled whole).
        dtype: what the weights compute in. None: float32 on CPU, the arithmetic a vLLM server started by
            :class:`~agentgraph.slm.server.VLLMServer` shares, so both backends give the same answers;
            bfloat16 elsewhere. ``"bfloat16"`` on a CPU with bf16 instructions (AVX512-BF16 or AMX) runs
            faster (two AVX512 EPYC cores: a decoding pass 45 against 64 ms, the example's 16 concurrent
            requests 9.4 against 7.3 requests/s, measured back to back) at the cost of that agreement; a CPU without them
            would emulate it, many times slower, so it is refused there.
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
        prefix_cache_prompts: int = 4,
        dtype: Literal["float32", "bfloat16"] | None = None,
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
        self.dtype: Literal["float32", "bfloat16"] = dtype or ("float32" if device == "cpu" else "bfloat16")
        if self.dtype == "bfloat16" and device == "cpu" and not cpu_computes_bf16():
            raise ConfigError(
                "this CPU has no bf16 instructions (AVX512-BF16 or AMX), so a bfloat16 SLM would be emulated, "
                "many times slower than float32: leave dtype (AGENTGRAPH_SLM_DTYPE) at float32 here"
            )
        self.model = load_causal_lm(self.folder, self.adapter, dtype=getattr(torch, self.dtype)).to(device).eval()
        self.device = device
        self.max_context_tokens = max_context_tokens or self.model.config.max_position_embeddings
        self._stop_ids = _stop_token_ids(self.model.generation_config, self.tokenizer)
        tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.model.config.vocab_size, stop_token_ids=sorted(self._stop_ids)
        )
        self._grammars = xgrammar.GrammarCompiler(tokenizer_info)
        self.prefixes = PrefixCache(prefix_cache_prompts)
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
        The tokens every prompt shares with a cached one are not run again: their KV cache is
        repeated for each row and the pass reads the rest, the padding between the two.
        """
        import torch
        from transformers import DynamicCache

        shared, kv = self.prefixes.lookup(prompts)
        rest = [prompt[shared:] for prompt in prompts]
        width = max(map(len, rest))
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, tokens in enumerate(rest):
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, shared + width - len(tokens) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        cache = DynamicCache(
            ddp_cache_data=[(keys.expand(len(prompts), -1, -1, -1), values.expand(len(prompts), -1, -1, -1))
                            for keys, values in kv] if kv else None,
            config=self.model.config,
        )  # fmt: skip
        output = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            **forward,
        )
        if not shared:
            longest = max(range(len(prompts)), key=lambda row: len(prompts[row]))  # the row without padding
            self.prefixes.keep(prompts[longest], output.cache, row=longest)
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

        Tokens copied from the prompt (an order number, a name) are drafted and checked in one pass
        (prompt-lookup decoding): when a row's last tokens occur in its prompt, the tokens that follow
        them there go into the next pass beside its last token, and the row keeps the drafts its own
        greedy choice confirms, position by position, so the answer is the one decoded token by token.
        The drafts a row does not keep stay in the cache, hidden by the mask.
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
        bitmask = xgrammar.allocate_token_bitmask(1, self.model.config.vocab_size)
        with torch.inference_mode():
            output, mask, next_positions = self._prefill([row.call.prompt_ids for row in active])
            # As after every pass: per row, the logits its next tokens are read from, and where the first token
            # the pass read for it sits (here the prompt's last one, and no drafts).
            logits, positions = output.logits[:, -1:, :], next_positions - 1
            drafts: list[list[int]] = [[] for _ in active]
            while True:
                kept, confirmed = [], []
                for number, row in enumerate(active):
                    ended, taken = row.advance(
                        logits[number, : len(drafts[number]) + 1],
                        drafts[number],
                        bitmask,
                        self._stop_ids,
                        self.tokenizer,
                    )
                    if ended:
                        finish(row, ended)
                    else:
                        kept.append(number)
                        confirmed.append(taken)
                if not kept:
                    return
                width = logits.shape[1]
                for number, taken in zip(kept, confirmed, strict=True):
                    # The pass read [last token, drafts...]; the drafts after the confirmed ones are not the row's.
                    mask[number, mask.shape[1] - width + 1 + taken :] = 0
                    positions[number] += 1 + taken
                if len(kept) < len(active):
                    keep = torch.tensor(kept)
                    output.cache.batch_select_indices(keep.to(self.device))
                    mask, positions = mask[keep], positions[keep]
                    active = [active[number] for number in kept]
                # Every row reads as many positions as the longest draft needs: drafts cost more the larger the batch.
                most = min(_MAX_DRAFT_TOKENS, _DRAFT_TOKENS_PER_PASS // len(active) - 1)
                drafts = [row.draft(most) for row in active]
                width = 1 + max(map(len, drafts))
                ids = torch.full((len(active), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
                read = torch.zeros((len(active), width), dtype=torch.long)
                for number, (row, drafted) in enumerate(zip(active, drafts, strict=True)):
                    ids[number, : 1 + len(drafted)] = torch.tensor([row.generated[-1], *drafted])
                    read[number, : 1 + len(drafted)] = 1
                mask = torch.cat([mask, read], dim=1)
                output = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=(positions[:, None] + torch.arange(width)).to(self.device),
                    cache=output.cache,
                    use_cache=True,
                )
                logits = output.logits

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


_MAX_DRAFT_TOKENS = 12
"""The most prompt tokens one row drafts in a pass (an order number of twelve digits at once)."""
_DRAFT_TOKENS_PER_PASS = 32
"""Positions one decoding pass reads at most, over its rows: a batch of 16 drafts one token a row, of 32 none."""
_DRAFT_MATCH_TOKENS = (2, 3)
"""How many last generated tokens must occur in the prompt for what follows them there to be drafted: a
single token ("a quote") occurs too often to say what comes next."""


class PrefixCache:
    """The KV caches of the last ``max_prompts`` prompts prefilled whole, for the prompts that begin like them.

    :meth:`lookup` finds the cached prompt that every prompt of a batch shares the most leading tokens
    with (at least ``min_shared``, and never a prompt's last token: its logits are needed); only
    a miss is kept. Used under the model's lock, like everything that runs the model.
    """

    def __init__(self, max_prompts: int, *, min_shared: int = 16) -> None:
        self.max_prompts = max_prompts
        self.min_shared = min_shared
        self.hits = 0
        self.misses = 0
        self._prompts: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []

    def lookup(self, prompts: Sequence[list[int]]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """How many leading tokens every prompt shares with the best cached one, and their KV (0 and [] on a miss)."""
        best, used = 0, None
        longest_usable = min(map(len, prompts)) - 1
        for entry in self._prompts:
            shared = min(min(_common_length(entry[0], prompt) for prompt in prompts), longest_usable)
            if shared > best:
                best, used = shared, entry
        if used is None or best < self.min_shared:
            self.misses += 1
            return 0, []
        self.hits += 1
        self._prompts.remove(used)
        self._prompts.append(used)  # the most recently used goes last, the least recently used first
        return best, [(keys[:, :, :best], values[:, :, :best]) for keys, values in used[1]]

    def keep(self, prompt: list[int], cache: DynamicCache, *, row: int) -> None:
        """Keep ``row`` of ``cache``, the KV of ``prompt`` (a row without padding); the oldest goes when full."""
        from transformers.cache_utils import DynamicLayer

        if self.max_prompts <= 0 or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return  # a sliding-window layer does not keep every position
        kept = slice(row, row + 1), slice(None), slice(0, len(prompt))
        kv = [(keys[kept].clone(), values[kept].clone()) for keys, values, _ in cache]
        self._prompts.append((list(prompt), kv))
        del self._prompts[: -self.max_prompts]

    def clear(self) -> None:
        self._prompts.clear()


def _common_length(first: list[int], second: list[int]) -> int:
    for at, (a, b) in enumerate(zip(first, second, strict=False)):
        if a != b:
            return at
    return min(len(first), len(second))


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

    def advance(
        self, logits: torch.Tensor, drafts: list[int], bitmask: torch.Tensor, stop_ids: set[int], tokenizer
    ) -> tuple[Literal["stop", "length"] | None, int]:
        """Take the greedy token at each position of ``logits`` (one more than ``drafts``) while it confirms the draft.

        Returns how the row ended (None while it goes on) and how many drafts it confirmed; the last
        token taken is not in the cache yet.
        """
        import torch
        import xgrammar

        raw = torch.log_softmax(logits.float(), dim=-1)
        for at in range(len(drafts) + 1):
            scores = logits[at].float()
            if self.call.matcher is not None:
                self.call.matcher.fill_next_token_bitmask(bitmask, 0)
                scores = scores.cpu()[None]
                xgrammar.apply_token_bitmask_inplace(scores, bitmask)
                scores = scores[0]
            token = int(scores.argmax())
            ended = self.step(token, float(raw[at, token]), stop_ids, tokenizer)
            if ended or at == len(drafts) or token != drafts[at]:
                return ended, at
        raise AssertionError("unreachable: the last position always returns")

    def draft(self, most: int) -> list[int]:
        """Up to ``most`` tokens that followed the last generated ones where they last occur in the prompt."""
        prompt, generated = self.call.prompt_ids, self.generated
        room = min(most, self.call.max_tokens - len(generated) - 1)
        if room <= 0:
            return []
        for size in range(_DRAFT_MATCH_TOKENS[1], _DRAFT_MATCH_TOKENS[0] - 1, -1):
            if len(generated) < size:
                continue
            tail = generated[-size:]
            for start in range(len(prompt) - size - 1, -1, -1):
                if prompt[start : start + size] == tail:
                    return prompt[start + size : start + size + room]
        return []

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
