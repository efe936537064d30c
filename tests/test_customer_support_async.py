"""The example graph served through ``ainvoke``: eight customers at once, each answered as one at a time would be.

Real parts: the embedded SmolLM2, the trained router and reranker, SQLite for the store and the
idempotency keys. The escalation LLM is a scripted fake that records its calls.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from scripted_llm import answering_llm

from agentgraph.graphs.customer_support import CustomerSupportParts, compose
from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER

REQUESTS = {
    "lookup-a": "track order 10001",
    "lookup-b": "what is the status of order 10001?",
    "action": "I want to cancel order 48213",
    "knowledge-a": "which payment methods can I use?",
    "knowledge-b": "how long does a refund take?",
    "clarify": "10001",
    "statement": "my order 10001 arrived yesterday",
    "out-of-scope": "What's the weather in Lisbon tomorrow?",
}
"""Eight threads over every path of the graph: reads, a write, retrieval, a question, an acknowledgement, an escalation."""

ANSWER_KEYS = ("route", "intent", "response")


@pytest.fixture(scope="module")
def llm():
    return answering_llm("I am the LLM, answering an escalation.", times=16)


@pytest.fixture(scope="module")
def parts(embedded_slm, llm, tmp_path_factory):
    return CustomerSupportParts(data_dir=tmp_path_factory.mktemp("support-async"), slm=embedded_slm, llm=llm)


def turn_input(text: str) -> dict[str, str]:
    return {"text": text, "customer_id": DEMO_CUSTOMER}


@pytest.mark.slow
def test_eight_concurrent_threads_through_ainvoke_answer_as_one_at_a_time_and_keep_the_loop_free(parts, llm):
    graph = compose(parts)
    # The write runs in the concurrent batch only: a second cancellation would find the order cancelled.
    one_at_a_time = {
        name: graph.invoke(turn_input(text), {"configurable": {"thread_id": f"sync-{name}"}})
        for name, text in REQUESTS.items()
        if name != "action"
    }
    sync_llm_calls = len(llm.calls)
    assert parts.shop.count_writes() == 0

    async def serve_all() -> tuple[dict[str, dict], list[float]]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        results = await asyncio.gather(
            *(graph.ainvoke(turn_input(text), {"configurable": {"thread_id": f"async-{name}"}})
              for name, text in REQUESTS.items())
        )  # fmt: skip
        done.set()
        await ticker
        return dict(zip(REQUESTS, results, strict=True)), gaps

    started = time.perf_counter()
    concurrent, gaps = asyncio.run(serve_all())
    elapsed = time.perf_counter() - started

    for name in one_at_a_time:
        assert {k: concurrent[name].get(k) for k in ANSWER_KEYS} == {
            k: one_at_a_time[name].get(k) for k in ANSWER_KEYS
        }, name
    assert {concurrent[name]["route"] for name in REQUESTS} >= {"lookup", "action", "knowledge", "escalate"}
    assert (concurrent["action"]["route"], concurrent["action"]["intent"]) == ("action", "cancel_order")
    assert parts.shop.order_status(DEMO_CUSTOMER, "48213")["status"] == "cancelled"
    assert parts.shop.count_writes() == parts.shop.count_writes("cancel_order") == 1
    assert len(llm.calls) - sync_llm_calls == sync_llm_calls == 1, "only the out-of-scope request reaches the LLM"
    for name in REQUESTS:
        logged = [d for d in parts.decision_log.decisions() if d.thread_id == f"async-{name}"]
        assert logged and [d.node for d in logged] == [d.node for d in concurrent[name]["decisions"]], name
    # Every SLM call ran on a worker thread: the event loop kept ticking while eight requests were served.
    assert max(gaps) < max(1.0, elapsed / 4), f"the event loop stalled {max(gaps):.2f}s of {elapsed:.1f}s"
