"""The vLLM backend: the same SLM contract over a vLLM server's OpenAI-compatible API.

- ``choose`` tokenizes through the server's ``/tokenize`` (its chat template) and
  scores every label continuation exactly: one prompt per node of the labels' token
  trie, all sent at once, each reading the next-token log-probs it needs with
  ``logprob_token_ids``; the server's prefix cache computes the shared prompt once
  (``agentgraph slm serve`` sets the block size that keeps the rest small on CPU).
- ``structured`` uses vLLM structured outputs (``structured_outputs: {"json": schema}``). Start
  the server with ``--structured-outputs-config '{"disable_any_whitespace": true}'`` (``agentgraph
  slm serve`` does) for the compact JSON the embedded backend decodes: with free whitespace a
  small model can emit blanks until ``max_tokens``.
- ``generate`` is a chat completion with ``logprobs``.
- ``achoose``, ``astructured`` and ``agenerate`` send the same requests over an ``httpx.AsyncClient`` (one per
  event loop, made on first use there; ``aclose()`` closes the running loop's), the label reads all at once.
- An HTTP 4xx reply is :class:`~agentgraph.errors.SLMRequestRejectedError` (the request is at fault), a 5xx
  :class:`~agentgraph.errors.SLMServerError` (retry later); log-probs that are missing, not finite, of the wrong
  shape or for tokens not asked for are :class:`~agentgraph.errors.MalformedLogprobsError`, never scored.

Start a server with ``agentgraph slm serve``.

Example:
    >>> from agentgraph.slm import VLLMSLM
    >>> slm = VLLMSLM("http://127.0.0.1:8000")  # model name read from /v1/models  # doctest: +SKIP
    >>> slm.choose("Where is my parcel?", ["track_order", "cancel_order"]).label  # doctest: +SKIP
    'track_order'
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from agentgraph.errors import (
    MalformedLogprobsError,
    MalformedResponseError,
    SLMError,
    SLMRequestRejectedError,
    SLMServerError,
    SLMTimeoutError,
    SLMUnavailableError,
)
from agentgraph.slm.base import SLM, ChatMessage, GenerationResult, TokenLogprob, Usage

# The most ``logprob_token_ids`` vLLM takes in one request (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS).
_MAX_LOGPROB_TOKEN_IDS = 128


class VLLMSLM(SLM):
    """Client of a vLLM server.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        model: the served model name; None takes the server's only model.
        api_key: sent as a bearer token when the server was started with ``--api-key``.
        timeout_s: per-request timeout.
        max_context_tokens: budget; defaults to the server's ``max_model_len``.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_context_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http_options: dict[str, Any] = {"base_url": self.base_url, "timeout": timeout_s, "headers": headers}
        self._http = httpx.Client(**self._http_options)
        # An AsyncClient's connections belong to the event loop they were opened in: one client per loop.
        self._async_http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._async_http_lock = threading.Lock()
        served = self._served_models()
        if model is None:
            if len(served) != 1:
                raise SLMError(f"{self.base_url} serves {sorted(served)}; pass the model name to use")
            model = next(iter(served))
        elif model not in served:
            raise SLMError(f"{self.base_url} does not serve {model!r}; it serves {sorted(served)}")
        self.model_name = model
        self.max_context_tokens = max_context_tokens or served[model]

    def close(self) -> None:
        """Close the sync client (the async ones close with :meth:`aclose`, each in its event loop)."""
        self._http.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop (a later async call there opens a new one)."""
        with self._async_http_lock:
            client = self._async_http.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def tokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        return _field(self._post("/tokenize", self._tokenize_body(messages, add_generation_prompt)), "tokens", list)

    async def atokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        return _field(
            await self._apost("/tokenize", self._tokenize_body(messages, add_generation_prompt)), "tokens", list
        )

    def _tokenize_body(self, messages: Sequence[ChatMessage], add_generation_prompt: bool) -> dict[str, Any]:
        return {"model": self.model_name, "messages": list(messages), "add_generation_prompt": add_generation_prompt}

    def _score_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        """Read the next-token log-probs after every node of the continuations' token trie.

        Each node (a path the continuations share) is one prompt, prefix + path, and
        ``logprob_token_ids`` asks for exactly the tokens that follow it: the last
        position's log-probs are always computed, so the result is exact whatever the
        prefix cache served. All nodes go to the server at once (usually one request), so
        it schedules them together and its prefix cache computes the shared prompt once;
        each node then costs its path plus the prompt's last, partial cache block.
        ``prompt_logprobs`` would need one prompt per continuation but turns prefix-cache
        reads off and computes every prompt position: twice the tokens for 27 labels.
        """
        started = time.perf_counter()
        reads = _trie_reads(continuations)
        with ThreadPoolExecutor(len(reads)) as pool:
            replies = list(
                pool.map(lambda read: self._post("/v1/completions", self._next_token_body(prefix, *read)), reads)
            )
        return self._scores(prefix, continuations, reads, replies, started)

    async def _ascore_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        started = time.perf_counter()
        reads = _trie_reads(continuations)
        replies = await asyncio.gather(
            *(self._apost("/v1/completions", self._next_token_body(prefix, *read)) for read in reads)
        )
        return self._scores(prefix, continuations, reads, replies, started)

    def _next_token_body(self, prefix: list[int], paths: list[tuple[int, ...]], tokens: list[int]) -> dict[str, Any]:
        """The request for log P(token | prefix + path), for every path and token of one trie read."""
        return {
            "model": self.model_name,
            "prompt": [prefix + list(path) for path in paths],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logprob_token_ids": tokens,
            "return_tokens_as_token_ids": True,
        }

    def _scores(
        self,
        prefix: list[int],
        continuations: Mapping[str, list[int]],
        reads: list[tuple[list[tuple[int, ...]], list[int]]],
        replies: Sequence[dict[str, Any]],
        started: float,
    ) -> tuple[dict[str, float], Usage]:
        """Each continuation's summed log-prob, from the replies to its trie's reads."""
        step_logprobs = {
            step: logprob
            for (paths, tokens), reply in zip(reads, replies, strict=True)
            for step, logprob in self._next_token_logprobs(reply, paths, tokens).items()
        }
        scores = {
            label: sum(step_logprobs[tuple(ids[: depth + 1])] for depth in range(len(ids)))
            for label, ids in continuations.items()
        }
        usage = Usage(
            model=self.model_name,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=len(prefix),
            completion_tokens=max(map(len, continuations.values())),
        )
        return scores, usage

    def _next_token_logprobs(
        self, reply: dict[str, Any], paths: list[tuple[int, ...]], tokens: list[int]
    ) -> dict[tuple[int, ...], float]:
        """path + token -> log P(token | prefix + path), for every path and token, read off one reply."""
        endpoint = f"{self.base_url}/v1/completions"
        choices = _field(reply, "choices", list)
        indices = {c.get("index") if isinstance(c, dict) else None for c in choices}
        if len(choices) != len(paths) or indices != set(range(len(paths))):
            raise MalformedLogprobsError(endpoint, f"sent {len(paths)} prompts, got choices {choices!r:.200}")
        asked = {f"token_id:{token}": token for token in tokens}
        step_logprobs = {}
        for path, choice in zip(paths, sorted(choices, key=lambda c: c["index"]), strict=True):
            logprobs = choice.get("logprobs")
            top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
            if not (isinstance(top, list) and len(top) == 1 and isinstance(top[0], dict)):
                raise MalformedLogprobsError(
                    endpoint, f"expected top_logprobs for the one token asked, got {logprobs!r:.200}"
                )
            missing, unasked = set(asked) - set(top[0]), set(top[0]) - set(asked)
            # logprobs=1: the sampled token may come beside the tokens asked for, nothing else.
            if missing or len(unasked) > 1:
                raise MalformedLogprobsError(endpoint, f"asked for {sorted(asked)}, got log-probs for {sorted(top[0])}")
            for name, token in asked.items():
                step_logprobs[(*path, token)] = _logprob(top[0][name], endpoint, name)
        return step_logprobs

    def _generate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        return self._chat(messages, len(prompt_ids), max_tokens, _json_output(json_schema))

    async def _agenerate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        return await self._achat(messages, len(prompt_ids), max_tokens, _json_output(json_schema))

    def _generate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        return self._chat(messages, len(prompt_ids), max_tokens, _stop_at(stop))

    async def _agenerate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        return await self._achat(messages, len(prompt_ids), max_tokens, _stop_at(stop))

    def _chat(
        self, messages: list[dict[str, str]], prompt_tokens: int, max_tokens: int, extra: dict[str, Any]
    ) -> GenerationResult:
        started = time.perf_counter()
        reply = self._post("/v1/chat/completions", self._chat_body(messages, max_tokens, extra))
        return self._generation(reply, prompt_tokens, started)

    async def _achat(
        self, messages: list[dict[str, str]], prompt_tokens: int, max_tokens: int, extra: dict[str, Any]
    ) -> GenerationResult:
        started = time.perf_counter()
        reply = await self._apost("/v1/chat/completions", self._chat_body(messages, max_tokens, extra))
        return self._generation(reply, prompt_tokens, started)

    def _chat_body(self, messages: list[dict[str, str]], max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": True,
            **extra,
        }

    def _generation(self, reply: dict[str, Any], prompt_tokens: int, started: float) -> GenerationResult:
        """A chat completion's reply as a :class:`GenerationResult`, its log-probs checked."""
        endpoint = f"{self.base_url}/v1/chat/completions"
        choices = _field(reply, "choices", list)
        if not choices:
            raise MalformedResponseError(f"{endpoint} answered with no choices")
        choice = choices[0]
        content = _field(_field(choice, "message", dict), "content", str)
        logprobs = choice.get("logprobs")
        items = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and isinstance(item.get("token"), str) for item in items
        ):
            raise MalformedLogprobsError(
                endpoint, f"expected logprobs with a token and its logprob per output token, got {logprobs!r:.200}"
            )
        tokens = [
            TokenLogprob(token=item["token"], logprob=_logprob(item.get("logprob"), endpoint, item["token"]))
            for item in items
        ]
        return GenerationResult(
            text=content,
            tokens=tokens,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=Usage(
                model=self.model_name,
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=int(reply.get("usage", {}).get("prompt_tokens", prompt_tokens)),
                completion_tokens=int(reply.get("usage", {}).get("completion_tokens", len(tokens))),
            ),
        )

    def _served_models(self) -> dict[str, int]:
        """Served model name -> max_model_len."""
        with self._transport_errors():
            response = self._http.get("/v1/models")
        data = _field(_decode(response), "data", list)
        return {_field(m, "id", str): int(m.get("max_model_len") or 0) or 2048 for m in data}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._transport_errors():
            response = self._http.post(path, json=body)
        return _decode(response)

    async def _apost(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._transport_errors():
            response = await self._async_client().post(path, json=body)
        return _decode(response)

    def _async_client(self) -> httpx.AsyncClient:
        """The running event loop's client, made on first use there."""
        loop = asyncio.get_running_loop()
        with self._async_http_lock:
            client = self._async_http.get(loop)
            if client is None:
                client = self._async_http[loop] = httpx.AsyncClient(**self._http_options)
            return client

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """httpx's timeouts and connection failures as the typed errors (a sync or an async request alike)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise SLMTimeoutError(self.base_url, self.timeout_s) from exc
        except httpx.TransportError as exc:
            raise SLMUnavailableError(self.base_url, exc) from exc


def _trie_reads(continuations: Mapping[str, list[int]]) -> list[tuple[list[tuple[int, ...]], list[int]]]:
    """The token trie of ``continuations`` as requests: (node paths, tokens to read after them).

    A node's children are read in chunks of at most ``_MAX_LOGPROB_TOKEN_IDS`` and the nodes
    packed, in trie order, into as few requests as that limit allows: one for a few dozen labels.
    """
    children: dict[tuple[int, ...], set[int]] = {}
    for ids in continuations.values():
        for depth, token in enumerate(ids):
            children.setdefault(tuple(ids[:depth]), set()).add(token)
    reads: list[tuple[list[tuple[int, ...]], set[int]]] = []
    for path, tokens in sorted(children.items()):
        ordered = sorted(tokens)
        for start in range(0, len(ordered), _MAX_LOGPROB_TOKEN_IDS):
            chunk = set(ordered[start : start + _MAX_LOGPROB_TOKEN_IDS])
            if not reads or len(reads[-1][1] | chunk) > _MAX_LOGPROB_TOKEN_IDS:
                reads.append(([], set()))
            reads[-1][0].append(path)
            reads[-1][1].update(chunk)
    return [(paths, sorted(tokens)) for paths, tokens in reads]


def _json_output(json_schema: dict) -> dict[str, Any]:
    """The chat request's fields for output constrained to ``json_schema`` (vLLM structured outputs)."""
    return {"structured_outputs": {"json": json_schema}}


def _stop_at(stop: list[str]) -> dict[str, Any]:
    """The chat request's fields for ``stop`` strings (none when there are none)."""
    return {"stop": stop} if stop else {}


def _decode(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        error = SLMRequestRejectedError if response.status_code < 500 else SLMServerError
        raise error(response.request.method, str(response.request.url), response.status_code, response.text[:500])
    try:
        body = response.json()
    except ValueError as exc:
        raise MalformedResponseError(f"{response.request.url} answered with non-JSON: {response.text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise MalformedResponseError(f"{response.request.url} answered with {type(body).__name__}, not an object")
    return body


def _logprob(value: Any, endpoint: str, token: str) -> float:
    """``value`` as a log-probability (a finite number, at most 0); anything else is a malformed reply."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value > 0:
        raise MalformedLogprobsError(endpoint, f"the log-prob of {token!r} is {value!r:.100}, not a finite number <= 0")
    return float(value)


def _field(obj: Any, name: str, kind: type) -> Any:
    """``obj[name]``, checked to be a ``kind``; anything else is a malformed reply."""
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise MalformedResponseError(
            f"expected {kind.__name__} field {name!r} in the server's reply, got {value!r:.200}"
        )
    return value
