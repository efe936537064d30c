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
