"""The embedded backend: the SLM in-process with transformers (the default; nothing to start).

Labels are scored exactly (one prompt pass, then every label continuation in one
batch over a shared KV cache) and JSON is decoded under an xgrammar grammar
compiled from the pydantic model's JSON schema, so neither can leave its
constraint. The async calls (``achoose``, ``astructured``, ``agenerate``) run the
same work in worker threads, off the event loop; the model runs one call at a
time (a lock), so concurrent calls queue for it while the loop stays free.

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
from typing import TYPE_CHECKING, cast

from agentgraph.slm.base import SLM, ChatMessage, GenerationResult, TokenLogprob, Usage
from agentgraph.slm.models import load_causal_lm, model_and_adapter

if TYPE_CHECKING:
    from transformers import BatchEncoding


class TransformersSLM(SLM):
    """A causal LM run in this process on CPU (or ``device``), greedy and thread-safe.

    Args:
        model: a local transformers model folder, a LoRA adapter folder (loaded onto the base model
            it names and merged into it), or None for the packaged SmolLM2-135M-Instruct.
        device: torch device string.
        max_context_tokens: prompt plus output budget; defaults to the model's context length.
        num_threads: torch intra-op threads (None keeps torch's default).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        max_context_tokens: int | None = None,
        num_threads: int | None = None,
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
        self._lock = threading.Lock()

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
        import torch

        labels = list(continuations)
        width = max(len(ids) for ids in continuations.values())
        batch = torch.full((len(labels), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(labels), len(prefix) + width), dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for row, label in enumerate(labels):
            ids = continuations[label]
            batch[row, : len(ids)] = torch.tensor(ids)
            mask[row, len(prefix) : len(prefix) + len(ids)] = 1
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            # Only the prompt's last position predicts a label token: the LM head skips the rest.
            first = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, logits_to_keep=1)
            cache = first.cache
            cache.batch_repeat_interleave(len(labels))
            # Right padding is harmless: a causal model never lets padding influence earlier positions.
            rest = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device), cache=cache)
        # Position t predicts continuation token t: the prompt's last logits, then the batch's own.
        logits = torch.cat([first.logits[:, -1:, :].expand(len(labels), -1, -1), rest.logits[:, :-1, :]], dim=1)
        logprobs = (
            torch.log_softmax(logits.float(), dim=-1).gather(2, batch.to(logits.device).unsqueeze(-1)).squeeze(-1)
        )
        scores = {label: float(logprobs[row, : len(continuations[label])].sum()) for row, label in enumerate(labels)}
        usage = Usage(
            model=self.model_name,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=len(prefix),
            completion_tokens=max(len(ids) for ids in continuations.values()),
        )
        return scores, usage

    def _generate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        import xgrammar

        # Compact JSON, the grammar vLLM compiles with disable_any_whitespace: with free
        # whitespace a small model can emit blanks until max_tokens.
        grammar = self._grammars.compile_json_schema(json_schema, any_whitespace=False, separators=(",", ":"))
        return self._decode(prompt_ids, max_tokens, stop=[], matcher=xgrammar.GrammarMatcher(grammar))

    def _generate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        return self._decode(prompt_ids, max_tokens, stop=stop, matcher=None)

    def _decode(self, prompt_ids: list[int], max_tokens: int, *, stop: list[str], matcher) -> GenerationResult:
        """Greedy decoding with a KV cache; ``matcher`` (an xgrammar GrammarMatcher) masks the logits.

        Log-probabilities are taken from the raw distribution before masking, as vLLM reports them.
        """
        import torch
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.model.config.vocab_size) if matcher else None
        generated: list[int] = []
        logprobs: list[float] = []
        finish_reason = "length"
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            output = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
            while len(generated) < max_tokens:
                logits = output.logits[:, -1, :].float()
                raw = torch.log_softmax(logits, dim=-1)
                if bitmask is not None:  # allocated for the matcher
                    matcher.fill_next_token_bitmask(bitmask)
                    logits = logits.cpu()
                    xgrammar.apply_token_bitmask_inplace(logits, bitmask)
                token = int(logits.argmax(dim=-1))
                if token in self._stop_ids:
                    finish_reason = "stop"
                    break
                if matcher is not None and not matcher.accept_token(token):
                    raise RuntimeError(f"grammar rejected token {token} it allowed")  # an xgrammar bug, not input
                generated.append(token)
                logprobs.append(float(raw[0, token]))
                if stop and any(s in self.tokenizer.decode(generated) for s in stop):
                    finish_reason = "stop"
                    break
                output = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    cache=output.cache,
                    use_cache=True,
                )
        # One sequence of ids decodes to one string (the stub's list[str] is for a batch).
        text = cast(str, self.tokenizer.decode(generated, skip_special_tokens=True))
        for marker in stop:
            text = text.split(marker, 1)[0]
        return GenerationResult(
            text=text,
            tokens=[
                TokenLogprob(token=self.tokenizer.decode([t]), logprob=lp)
                for t, lp in zip(generated, logprobs, strict=True)
            ],
            finish_reason=finish_reason,
            usage=Usage(
                model=self.model_name,
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(generated),
            ),
        )


def _stop_token_ids(generation_config, tokenizer) -> set[int]:
    """End-of-turn ids: generation_config's eos (an int or a list) and the tokenizer's."""
    configured = generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) if configured is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
