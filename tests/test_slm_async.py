"""The async SLM calls give what the sync ones give, keep the event loop free, and fail with the same typed errors.

Real parts: the embedded SmolLM2, a real vLLM server, and scripted loopback HTTP servers for the
failures a real server does not produce on demand.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field
from test_slm_errors import MODELS_REPLY, chat_reply, chat_tokens, scoring_server, serve_replies, set_first_logprob

from agentgraph.errors import (
    ContextBudgetExceededError,
    EmptyInputError,
    MalformedLogprobsError,
    MalformedResponseError,
    SLMRequestRejectedError,
    SLMServerError,
    SLMTimeoutError,
    SLMUnavailableError,
    StructuredOutputError,
)
from agentgraph.slm import SLM, VLLMSLM

INTENTS = {
    "track_order": "the customer wants to know where an order is",
    "cancel_order": "the customer wants to cancel an order",
    "get_refund": "the customer wants money back",
    "contact_human_agent": "the customer asks for a person",
}
REQUESTS = [
    "Where is my parcel?",
    "Cancel order 10001 please",
    "I was charged twice, I want my money back",
    "Put me through to a person",
    "my package never arrived",
    "stop the order, I changed my mind",
]


class Ticket(BaseModel):
    order_id: str | None = Field(default=None, max_length=20)
    priority: int = Field(ge=1, le=5)


def run(slm: SLM, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` awaited in a fresh event loop, the vLLM client's connections of that loop closed after it."""

    async def main() -> Any:
        try:
            return await call()
        finally:
            if isinstance(slm, VLLMSLM):
                await slm.aclose()

    return asyncio.run(main())


def comparable(result: BaseModel) -> dict:
    """A result as data, without its latency (the one field two identical calls do not share)."""
    data = result.model_dump()
    del data["usage"]["latency_ms"]
    return data


def assert_same(expected: Any, actual: Any) -> None:
    """Equal, floats within the determinism the contract tests allow (rel 1e-4)."""
    if isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-7), (actual, expected)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same(expected[key], actual[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for want, got in zip(expected, actual, strict=True):
            assert_same(want, got)
    else:
        assert actual == expected


# Marked here: the conftest marks tests slow by the fixtures they name, and this one's backend is fetched by name.
@pytest.fixture(params=[pytest.param("embedded", marks=pytest.mark.slow), pytest.param("vllm", marks=pytest.mark.vllm)])
def slm(request) -> SLM:
    return request.getfixturevalue(f"{request.param}_slm")


def test_the_async_calls_give_the_sync_results(slm: SLM):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "I want my money back for order 48213"},
    ]
    cases = [
        (lambda s: s.choose, lambda s: s.achoose, ("Where is my parcel?", INTENTS), {}),
        (
            lambda s: s.choose,
            lambda s: s.achoose,
            (messages, list(INTENTS)),
            {"system": "You route customer requests."},
        ),
        (lambda s: s.choose, lambda s: s.achoose, ("Where is my parcel?", INTENTS), {"list_labels": False}),
        (
            lambda s: s.structured,
            lambda s: s.astructured,
            ("Where is order 10001? It is urgent.", Ticket),
            {"max_tokens": 60},
        ),
        (
            lambda s: s.generate,
            lambda s: s.agenerate,
            ("Write the numbers from one to ten.",),
            {"max_tokens": 20, "stop": ["five"]},
        ),
    ]
    for sync_call, async_call, args, kwargs in cases:
        expected = sync_call(slm)(*args, **kwargs)
        actual = run(slm, lambda async_call=async_call, args=args, kwargs=kwargs: async_call(slm)(*args, **kwargs))
        assert type(actual) is type(expected)
        assert_same(comparable(expected), comparable(actual))
    structured = run(slm, lambda: slm.astructured("Where is order 10001? It is urgent.", Ticket, max_tokens=60))
    assert structured.value == slm.structured("Where is order 10001? It is urgent.", Ticket, max_tokens=60).value


def test_the_async_calls_refuse_what_the_sync_ones_refuse(slm: SLM):
    huge = "refund " * (slm.max_context_tokens + 10)
    refusals = [
        (EmptyInputError, lambda: slm.achoose(" \n", INTENTS)),
        (EmptyInputError, lambda: slm.astructured("", Ticket)),
        (EmptyInputError, lambda: slm.agenerate([{"role": "user", "content": ""}])),
        (ValueError, lambda: slm.achoose("anything", ["same", "same"])),
        (ContextBudgetExceededError, lambda: slm.achoose(huge, INTENTS)),
        (ContextBudgetExceededError, lambda: slm.astructured(huge, Ticket)),
        (ContextBudgetExceededError, lambda: slm.agenerate(huge)),
        (StructuredOutputError, lambda: slm.astructured("Where is order 10001?", Ticket, max_tokens=3)),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            run(slm, call)


def test_concurrent_choices_all_finish_right_while_the_event_loop_keeps_ticking(slm: SLM):
    """Six achoose calls at once, beside a coroutine that ticks every 5 ms: each gets its own prompt's answer, and
    the loop never stalls for anything near one call's length (a model run on the loop would stall it a whole call)."""
    expected, shortest_call_s = [], math.inf
    for request in REQUESTS:
        started = time.perf_counter()
        expected.append(slm.choose(request, INTENTS))
        shortest_call_s = min(shortest_call_s, time.perf_counter() - started)

    async def choices_beside_a_ticker() -> tuple[list, list[float]]:
        gaps: list[float] = []
        finished = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not finished.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        results = await asyncio.gather(*(slm.achoose(request, INTENTS) for request in REQUESTS))
        finished.set()
        await ticker
        return results, gaps

    results, gaps = run(slm, choices_beside_a_ticker)
    for want, got in zip(expected, results, strict=True):
        assert_same(comparable(want), comparable(got))
    assert len({result.label for result in results}) > 1  # the prompts differ in answer: a mix-up would show
    assert len(gaps) > 10 and max(gaps) < shortest_call_s / 4, (max(gaps), shortest_call_s)


# The vLLM client's async path against scripted servers: the failures a real server gives only by accident.


@pytest.fixture
def fake_server_url(request):
    routes, delay = request.param
    server = serve_replies(routes, delay)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_async_client_scores_as_the_sync_one_in_event_loops_taking_turns():
    """A connection kept open (vLLM's server keeps them, HTTP/1.1) belongs to the event loop that opened it: one
    client shared by two live loops would fail in the second; each loop gets its own, and a new one after aclose."""
    server = serve_replies(*scoring_server())
    server.RequestHandlerClass.protocol_version = "HTTP/1.1"  # keep-alive; every POST route here reads its body
    try:
        slm = VLLMSLM(f"http://127.0.0.1:{server.server_address[1]}")
        expected = slm.choose("hello", ["yes", "no"])
        assert expected.label == "no" and expected.probabilities["no"] == pytest.approx(math.e / (1 + math.e))
        results = []
        with asyncio.Runner() as first, asyncio.Runner() as second:
            for runner in (first, second, first, second):
                results.append(runner.run(slm.achoose("hello", ["yes", "no"])))
            first.run(slm.aclose())
            results.append(first.run(slm.achoose("hello", ["yes", "no"])))
            for runner in (first, second):
                runner.run(slm.aclose())
        slm.close()
    finally:
        server.shutdown()
        server.server_close()
    for result in results:
        assert_same(comparable(expected), comparable(result))


def assert_same_failure(slm: VLLMSLM, sync_call: Callable[[], Any], async_call: Callable[[], Awaitable[Any]],
                        error: type[Exception], match: str) -> None:  # fmt: skip
    """The sync and the async call both raise ``error`` (exactly that class), saying the same."""
    with pytest.raises(error, match=match) as sync_caught:
        sync_call()
    with pytest.raises(error, match=match) as async_caught:
        run(slm, async_call)
    assert type(async_caught.value) is type(sync_caught.value)
    assert str(async_caught.value) == str(sync_caught.value)


FAILING_SERVERS = [
    pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": {"tokens": [1]}}, 2.0), SLMTimeoutError, "within 0.3 s", id="slow"),
    pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": (400, {"error": {"message": "too long"}})}, 0),
                 SLMRequestRejectedError, "too long", id="4xx"),
    pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": (503, {"error": {"message": "overloaded"}})}, 0),
                 SLMServerError, "retry later", id="5xx"),
    pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": b"<html>proxy error</html>"}, 0),
                 MalformedResponseError, "non-JSON", id="not-json"),
    pytest.param(scoring_server(set_first_logprob(float("nan"))), MalformedLogprobsError, "not a finite number",
                 id="nan-choice-logprob"),
    pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": chat_tokens, "/v1/completions": (500, b"Internal Server Error")}, 0),
                 SLMServerError, "retry later", id="5xx-scoring"),
]  # fmt: skip


@pytest.mark.parametrize(("fake_server_url", "error", "match"), FAILING_SERVERS, indirect=["fake_server_url"])
def test_an_async_choice_fails_with_the_sync_typed_error(fake_server_url, error, match):
    slm = VLLMSLM(fake_server_url, timeout_s=0.3)
    assert_same_failure(
        slm, lambda: slm.choose("hello", ["yes", "no"]), lambda: slm.achoose("hello", ["yes", "no"]), error, match
    )


@pytest.mark.parametrize(
    ("fake_server_url", "error", "match"),
    [
        pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": chat_tokens, "/v1/chat/completions": chat_reply(float("nan"))}, 0),
                     MalformedLogprobsError, "log-prob of 'hi' is nan", id="nan-token-logprob"),
        pytest.param(({"/v1/models": MODELS_REPLY, "/tokenize": chat_tokens, "/v1/chat/completions": {"choices": []}}, 0),
                     MalformedResponseError, "no choices", id="no-choices"),
    ],
    indirect=["fake_server_url"],
)  # fmt: skip
def test_an_async_generation_fails_with_the_sync_typed_error(fake_server_url, error, match):
    slm = VLLMSLM(fake_server_url)
    assert_same_failure(slm, lambda: slm.generate("hello"), lambda: slm.agenerate("hello"), error, match)
    assert_same_failure(
        slm, lambda: slm.structured("hello", Ticket), lambda: slm.astructured("hello", Ticket), error, match
    )


def test_a_closed_port_is_unavailable_to_the_async_client_as_to_the_sync_one():
    """A client made while its server answered; the server is gone and its port closed."""
    server = serve_replies({"/v1/models": MODELS_REPLY})
    slm = VLLMSLM(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()
    for sync_call, async_call in [
        (lambda: slm.choose("hello", ["yes", "no"]), lambda: slm.achoose("hello", ["yes", "no"])),
        (lambda: slm.structured("hello", Ticket), lambda: slm.astructured("hello", Ticket)),
        (lambda: slm.generate("hello"), lambda: slm.agenerate("hello")),
    ]:
        with pytest.raises(SLMUnavailableError, match="agentgraph slm serve") as sync_caught:
            sync_call()
        with pytest.raises(SLMUnavailableError, match="agentgraph slm serve") as async_caught:
            run(slm, async_call)
        assert async_caught.value.base_url == sync_caught.value.base_url == slm.base_url
