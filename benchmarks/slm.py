"""SLM backend benchmark: load/start time, 27-label choice and JSON extraction latency, vLLM throughput.

    python benchmarks/slm.py                     # embedded and a fresh local vLLM server
    python benchmarks/slm.py --backend embedded
    python benchmarks/slm.py --vllm-url http://127.0.0.1:8000   # an already running server

Requests come from the fixed-seed test split of the customer-support data.
Figures are printed (and written with --json); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.graphs.customer_support.bitext import load_customer_support, split_customer_support
from agentgraph.slm import SLM, VLLMSLM, TransformersSLM
from agentgraph.slm.server import ServeSettings, VLLMServer


class SupportRequestFields(BaseModel):
    """What a support request names; the benchmark's extraction schema."""

    # Bounded strings: greedy decoding of a 135M model can repeat inside an unbounded string.
    order_id: str | None = Field(default=None, max_length=20, description="order number, digits only")
    invoice_id: str | None = Field(default=None, max_length=20)
    urgency: Literal["low", "normal", "high"]


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(latencies_ms, [50, 95])  # numpy's definition, as every benchmark here
    return {"p50_ms": float(p50), "p95_ms": float(p95), "n": len(latencies_ms)}


def measure(slm: SLM, texts: list[str], intents: list[str], labels: list[str], json_samples: int) -> dict:
    """Sequential latencies of choose (27 labels) and structured extraction, measured around the call."""
    slm.choose("warm-up", labels)
    slm.structured("warm-up: order 1", SupportRequestFields)
    choice_ms, correct = [], 0
    for text, intent in zip(texts, intents, strict=False):
        started = time.perf_counter()
        result = slm.choose(f"Customer request: {text}\nWhich intent is it?", labels)
        choice_ms.append((time.perf_counter() - started) * 1000)
        correct += result.label == intent
    json_ms = []
    for text in texts[:json_samples]:
        started = time.perf_counter()
        slm.structured(text, SupportRequestFields)
        json_ms.append((time.perf_counter() - started) * 1000)
    return {
        "choice_27_labels": latency_summary(choice_ms),
        "choice_zero_shot_accuracy": correct / len(texts),
        "json_extraction": latency_summary(json_ms),
    }


def throughput(slm: SLM, texts: list[str], labels: list[str], concurrency: int) -> dict[str, float]:
    """Requests per second with ``concurrency`` clients, for choice and for JSON extraction."""
    figures = {}
    for name, call in (
        ("choice_rps", lambda t: slm.choose(f"Customer request: {t}\nWhich intent is it?", labels)),
        ("json_rps", lambda t: slm.structured(t, SupportRequestFields)),
    ):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(call, texts))
        figures[name] = len(texts) / (time.perf_counter() - started)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["embedded", "vllm", "both"], default="both")
    parser.add_argument("--vllm-url", help="use a running server instead of starting one")
    parser.add_argument("--samples", type=int, default=60, help="requests for the latency figures")
    parser.add_argument("--json-samples", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--throughput-requests", type=int, default=48, help="requests per throughput figure")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="vLLM request timeout, s: a CPU server answers 16 concurrent choices in minutes",
    )
    parser.add_argument("--json", dest="json_out", help="also write the figures to this file")
    args = parser.parse_args()

    test = split_customer_support(load_customer_support())["test"][::7][: args.samples]
    texts, intents = [r.text for r in test], [r.intent for r in test]
    labels = sorted({r.intent for r in load_customer_support()})
    report: dict[str, dict] = {}

    if args.backend in ("embedded", "both"):
        started = time.perf_counter()
        embedded = TransformersSLM()
        report["embedded"] = {
            "load_s": time.perf_counter() - started,
            **measure(embedded, texts, intents, labels, args.json_samples),
        }
        print(json.dumps({"embedded": report["embedded"]}, indent=2), flush=True)
        del embedded

    if args.backend in ("vllm", "both"):
        server = None
        if args.vllm_url:
            url, start_s = args.vllm_url, None
        else:
            server = VLLMServer(ServeSettings(port=0))
            started = time.perf_counter()
            url = server.start()
            start_s = time.perf_counter() - started
        try:
            remote = VLLMSLM(url, timeout_s=args.timeout)
            report["vllm"] = {"server_start_s": start_s, **measure(remote, texts, intents, labels, args.json_samples)}
            print(json.dumps({"vllm": report["vllm"]}, indent=2), flush=True)
            report["vllm"][f"throughput_{args.concurrency}_concurrent"] = throughput(
                remote, texts[: args.throughput_requests], labels, args.concurrency
            )
        finally:
            if server:
                server.stop()

    print(json.dumps(report, indent=2))  # everything, the throughput figures included
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
