"""The vLLM backend: the same SLM contract over a vLLM server's OpenAI-compatible API.

- ``choose`` tokenizes through the server's ``/tokenize`` (its chat template) and
  scores every label continuation exactly, walking the labels' token trie with
  ``logprob_token_ids`` requests that the server's prefix cache makes cheap.
- ``structured`` uses vLLM structured outputs (``structured_outputs: {"json": schema}``). Start
  the server with ``--structured-outputs-config '{"disable_any_whitespace": true}'`` (``agentgraph
  slm serve`` does) for the compact JSON the embedded backend decodes: with free whitespace a
  small model can emit blanks until ``max_tokens``.
- ``generate`` is a chat completion with ``logprobs``.

Start a server with ``agentgraph slm serve``.

Example:
    >>> from agentgraph.slm import VLLMSLM
    >>> slm = VLLMSLM("http://127.0.0.1:8000")  # model name read from /v1/models
    >>> slm.choose("Where is my parcel?", ["track_order", "cancel_order"]).label
    'track_order'
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from agentgraph.errors import MalformedResponseError, SLMError, SLMTimeoutError, SLMUnavailableError
from agentgraph.slm.base import SLM, ChatMessage, GenerationResult, TokenLogprob, Usage


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
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)
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
        self._http.close()

    def tokenize_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> list[int]:
        reply = self._post(
            "/tokenize",
            {"model": self.model_name, "messages": list(messages), "add_generation_prompt": add_generation_prompt},
        )
        return _field(reply, "tokens", list)

    def _score_continuations(
        self, prefix: list[int], continuations: Mapping[str, list[int]]
    ) -> tuple[dict[str, float], Usage]:
        """Walk the token trie of the continuations, one batched request per depth.

        At depth d every distinct continuation prefix is one prompt (the server's prefix
        cache makes each cost a few tokens) and ``logprob_token_ids`` asks for exactly
        the next tokens the labels need. ``prompt_logprobs`` would do it in one request but
        disables the prefix cache and computes every prompt position: 50-100x slower on CPU.
        """
        started = time.perf_counter()
        step_logprobs: dict[tuple[int, ...], float] = {}  # path + next token -> log P(next | prefix + path)
        for depth in range(max(map(len, continuations.values()))):
            paths = sorted({tuple(ids[:depth]) for ids in continuations.values() if len(ids) > depth})
            wanted = sorted({ids[depth] for ids in continuations.values() if len(ids) > depth})
            reply = self._post(
                "/v1/completions",
                {
                    "model": self.model_name,
                    "prompt": [prefix + list(path) for path in paths],
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "logprobs": 1,
                    "logprob_token_ids": wanted,
                    "return_tokens_as_token_ids": True,
                },
            )
            choices = sorted(_field(reply, "choices", list), key=lambda c: c["index"])
            if len(choices) != len(paths):
                raise MalformedResponseError(f"sent {len(paths)} prompts, got {len(choices)} choices")
            for path, choice in zip(paths, choices):
                top = _field(_field(choice, "logprobs", dict), "top_logprobs", list)
                try:
                    for token in wanted:
                        step_logprobs[(*path, token)] = float(top[0][f"token_id:{token}"])
                except (IndexError, KeyError, TypeError, ValueError) as exc:
                    raise MalformedResponseError(f"logprobs lack the requested token ids: {exc!r}") from exc
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

    def _generate_json(
        self, messages: list[dict[str, str]], prompt_ids: list[int], json_schema: dict, max_tokens: int
    ) -> GenerationResult:
        return self._chat(messages, len(prompt_ids), max_tokens, {"structured_outputs": {"json": json_schema}})

    def _generate_text(
        self, messages: list[dict[str, str]], prompt_ids: list[int], max_tokens: int, stop: list[str]
    ) -> GenerationResult:
        return self._chat(messages, len(prompt_ids), max_tokens, {"stop": stop} if stop else {})

    def _chat(
        self, messages: list[dict[str, str]], prompt_tokens: int, max_tokens: int, extra: dict[str, Any]
    ) -> GenerationResult:
        started = time.perf_counter()
        reply = self._post(
            "/v1/chat/completions",
            {
                "model": self.model_name,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "logprobs": True,
                **extra,
            },
        )
        choice = _field(reply, "choices", list)[0]
        content = _field(_field(choice, "message", dict), "content", str)
        tokens = [
            TokenLogprob(token=item["token"], logprob=float(item["logprob"]))
            for item in _field(_field(choice, "logprobs", dict), "content", list)
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
        try:
            response = self._http.get("/v1/models")
        except httpx.TimeoutException as exc:
            raise SLMTimeoutError(self.base_url, self.timeout_s) from exc
        except httpx.TransportError as exc:
            raise SLMUnavailableError(self.base_url, exc) from exc
        data = _field(_decode(response), "data", list)
        return {_field(m, "id", str): int(m.get("max_model_len") or 0) or 2048 for m in data}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise SLMTimeoutError(self.base_url, self.timeout_s) from exc
        except httpx.TransportError as exc:
            raise SLMUnavailableError(self.base_url, exc) from exc
        return _decode(response)


def _decode(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise SLMError(f"{response.request.method} {response.request.url} failed with {response.status_code}: {response.text[:500]}")
    try:
        body = response.json()
    except ValueError as exc:
        raise MalformedResponseError(f"{response.request.url} answered with non-JSON: {response.text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise MalformedResponseError(f"{response.request.url} answered with {type(body).__name__}, not an object")
    return body


def _field(obj: Any, name: str, kind: type) -> Any:
    """``obj[name]``, checked to be a ``kind``; anything else is a malformed reply."""
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise MalformedResponseError(f"expected {kind.__name__} field {name!r} in the server's reply, got {value!r:.200}")
    return value
