"""Concurrent calls to the embedded SLM run in batches and get exactly what they get one at a time.

Real parts: the embedded SmolLM2 for the batched model calls; plain functions for the batcher's own rules.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel, Field

from agentgraph.errors import StructuredOutputError
from agentgraph.slm.batching import CallBatcher


class Order(BaseModel):
    order_id: str = Field(description="the order number the message names")


class Contact(BaseModel):
    name: str
    wants_callback: bool


REQUESTS = [
    "Where is order 10001?",
    "Cancel order 4587345 please, it was a mistake",
    "hi",
    "I was charged twice for order 77 and I want my money back right now",
    "My name is Ana Lopez, call me back about my refund",
    "what is your returns policy for shoes bought in a sale last month?",
]


def structured_text(slm, text: str, schema: type[BaseModel]) -> str:
    """The JSON the SLM writes for ``text``, or the error it ended in (a cut output is an answer to compare too)."""
    try:
        return slm.structured(text, schema, max_tokens=48).text
    except StructuredOutputError as exc:
        return f"{type(exc).__name__}: {exc.text}"


def recording_batch_sizes(batcher: CallBatcher) -> list[int]:
    sizes: list[int] = []
    run = batcher._run_batch

    def recorded(requests, deliver):
        sizes.append(len(requests))
        run(requests, deliver)

    batcher._run_batch = recorded
    return sizes


def test_concurrent_calls_share_forward_passes_and_get_their_one_at_a_time_answers(embedded_slm, monkeypatch):
    calls = [
        *[lambda text=text: structured_text(embedded_slm, text, Order) for text in REQUESTS],
        lambda: structured_text(embedded_slm, REQUESTS[4], Contact),
        lambda: embedded_slm.generate(REQUESTS[2], max_tokens=20, stop=["."]).text,
        lambda: embedded_slm.generate(REQUESTS[3], max_tokens=3).finish_reason,
        *[
            lambda text=text, labels=labels: embedded_slm.choose(text, labels).probabilities
            for text in REQUESTS
            for labels in (
                ["track_order", "cancel_order"],
                {"refund": "money back", "other": "anything else", "faq": "a question"},
            )
        ],
    ]
    alone = [call() for call in calls]  # one at a time: every call is a batch of one

    decoding, scoring = recording_batch_sizes(embedded_slm._decoding), recording_batch_sizes(embedded_slm._scoring)
    monkeypatch.setattr(embedded_slm._decoding, "window_s", 0.2)  # two cores start threads slowly
    monkeypatch.setattr(embedded_slm._scoring, "window_s", 0.2)
    with ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(lambda call: call(), calls))

    assert max(decoding) > 1 and max(scoring) > 1
    assert sum(decoding) == 9 and sum(scoring) == 12
    for one, batched in zip(alone, together, strict=True):
        if isinstance(one, dict):
            assert one.keys() == batched.keys()
            assert all(batched[label] == pytest.approx(p, abs=1e-4) for label, p in one.items())
        else:
            assert batched == one


def test_a_prompt_prefilled_from_a_cached_prefix_gets_the_answer_it_gets_read_whole(embedded_slm):
    cache = embedded_slm.prefixes

    def answers(text: str, *, whole: bool) -> tuple:
        def call(ask):
            if whole:
                cache.clear()  # nothing cached: the prompt is read whole
            return ask()

        generated = call(lambda: embedded_slm.generate(text, max_tokens=8))
        return (
            call(lambda: structured_text(embedded_slm, text, Order)),
            call(lambda: embedded_slm.choose(text, ["track_order", "cancel_order", "get_refund"]).probabilities),
            generated.text,
            [token.logprob for token in generated.tokens],
        )

    read_whole = [answers(text, whole=True) for text in REQUESTS]
    hits = cache.hits
    from_cache = [answers(text, whole=False) for text in REQUESTS]
    assert cache.hits - hits >= 3 * len(REQUESTS) - 3  # all but the first calls begin like a cached prompt
    for (json, probabilities, text, logprobs), (json_c, probabilities_c, text_c, logprobs_c) in zip(
        read_whole, from_cache, strict=True
    ):
        assert (json_c, text_c) == (json, text)
        assert probabilities_c == pytest.approx(probabilities, abs=1e-4)
        assert logprobs_c == pytest.approx(logprobs, abs=1e-3)


def test_tokens_copied_from_the_prompt_are_drafted_and_decode_to_the_token_by_token_answer(embedded_slm, monkeypatch):
    import agentgraph.slm.embedded as embedded

    passes = []
    hook = embedded_slm.model.register_forward_pre_hook(lambda module, args: passes.append(1))

    def answers() -> tuple:
        generated = embedded_slm.generate("Repeat after me: the quick brown fox jumps over the lazy dog", max_tokens=24)
        return (
            structured_text(embedded_slm, "Where is order 4587345123? It was due on Monday.", Order),
            generated.text,
            [token.logprob for token in generated.tokens],
            len(passes),
        )

    try:
        monkeypatch.setattr(embedded, "_MAX_DRAFT_TOKENS", 0)
        *token_by_token, passes_token_by_token = answers()
        passes.clear()
        monkeypatch.undo()
        *drafted, passes_drafted = answers()
    finally:
        hook.remove()
    assert drafted[:2] == token_by_token[:2]
    assert drafted[2] == pytest.approx(token_by_token[2], abs=1e-3)
    assert '"4587345123"' in drafted[0] and passes_drafted < passes_token_by_token


def test_a_row_that_fails_fails_only_its_own_caller():
    def run(requests, deliver):
        for row, number in enumerate(requests):
            deliver(row, ValueError(f"{number} is odd") if number % 2 else number * 10)

    batcher = CallBatcher(run, lock=threading.Lock(), max_batch_size=8, window_s=0.1)
    outcomes: dict[int, object] = {}

    def call(number: int) -> None:
        try:
            outcomes[number] = batcher.submit(number)
        except ValueError as exc:
            outcomes[number] = str(exc)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(4)))
    assert outcomes == {0: 0, 1: "1 is odd", 2: 20, 3: "3 is odd"}


def test_a_batch_that_raises_fails_its_callers_and_the_next_batch_still_runs():
    failing = threading.Event()
    failing.set()

    def run(requests, deliver):
        if failing.is_set():
            failing.clear()
            raise RuntimeError("the model crashed")
        for row, number in enumerate(requests):
            deliver(row, -number)

    batcher = CallBatcher(run, lock=threading.Lock(), max_batch_size=4, window_s=0)
    with pytest.raises(RuntimeError, match="crashed"):
        batcher.submit(1)
    assert batcher.submit(2) == -2


def test_a_batch_that_forgets_a_row_answers_it_with_an_error():
    batcher = CallBatcher(lambda requests, deliver: None, lock=threading.Lock(), max_batch_size=2, window_s=0)
    with pytest.raises(RuntimeError, match="without answering"):
        batcher.submit("lost")


@pytest.mark.parametrize(("size", "window", "match"), [(0, 0.0, "max_batch_size"), (4, -1.0, "window_s")])
def test_batch_settings_out_of_range_are_refused(size, window, match):
    with pytest.raises(ValueError, match=match):
        CallBatcher(lambda requests, deliver: None, lock=threading.Lock(), max_batch_size=size, window_s=window)
