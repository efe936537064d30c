"""Does a distilled artifact answer the same when served by vLLM as in-process? (``agentgraph distill agree``)

A model folder written by ``agentgraph distill train`` is plain safetensors, so
``agentgraph slm serve --model DIR`` serves it. :func:`backend_agreement` puts
the same held-out requests to the artifact on two backends, each through the
role's real code path (the router's :class:`~agentgraph.routing.SLMStrategy`
for ``route``, the schema enforcer's :class:`~agentgraph.extraction.Extractor` for ``extract``), and reports how often the
answers are the same: for a router also the largest gap between the two
probabilities of the chosen label (what the confidence gate reads), for an
extractor the share of identical objects.

Example:
    >>> from agentgraph.distill.agreement import BackendAgreement
    >>> BackendAgreement(role="route", backends=("embedded", "vllm"), rows=2, same_answer=1.0,
    ...                  probability_gap_max=0.004, probability_gap_mean=0.002, disagreements=[],
    ...                  latency_ms_p50={"embedded": 80.0, "vllm": 120.0}).same_answer
    1.0
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.calibration import selective_accuracy_at_coverage
from agentgraph.distill.train import DistillError, load_route_dataset, read_manifest, stratified_rows
from agentgraph.slm import SLM


class BackendAgreement(BaseModel):
    """How often two backends serving one artifact give the same answer on the same requests."""

    role: str
    backends: tuple[str, str]
    rows: int
    same_answer: float = Field(description="share of requests with the same label (route) or the same object (extract)")
    probability_gap_max: float | None = Field(
        default=None, description="route: largest |p_a - p_b| of the first backend's label"
    )
    probability_gap_mean: float | None = None
    disagreements: list[dict[str, Any]] = Field(description="the requests answered differently (up to 20)")
    accuracy: dict[str, float] = Field(
        default_factory=dict,
        description="each backend against the labels: route, its top label; extract, every entity field equal to the target",
    )
    selective_accuracy_at_coverage: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="route: each backend's accuracy over its most confident 80/90/95% (by the label's probability)",
    )
    latency_ms_p50: dict[str, float]


def _timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000


def backend_agreement(
    model_dir: str | os.PathLike[str],
    first: SLM,
    second: SLM,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = 200,
    names: tuple[str, str] = ("embedded", "vllm"),
) -> BackendAgreement:
    """Answer ``limit`` test requests (round-robin over classes; None: all) with the artifact on both backends."""
    manifest = read_manifest(model_dir)
    role = manifest.get("role")
    folder = data_dir or manifest["dataset"]["folder"]
    if role == "route":
        rows: Sequence[tuple[str, Any]] = load_route_dataset(folder).splits["test"]
        if limit is not None:
            rows = stratified_rows(rows, limit)
        return _route_agreement(model_dir, first, second, rows, names)
    if role == "extract":
        from agentgraph.distill.extract import extraction_stratum, load_extract_rows

        rows = load_extract_rows(folder)[1]["test"]
        if limit is not None:
            rows = stratified_rows(rows, limit, label=extraction_stratum)
        return _extract_agreement(model_dir, first, second, rows, names)
    raise DistillError(f"{model_dir} was trained for role {role!r}; agreement covers route and extract")


def _route_agreement(
    model_dir: str | os.PathLike[str], first: SLM, second: SLM, rows: Sequence[tuple[str, str]], names: tuple[str, str]
) -> BackendAgreement:
    from agentgraph.distill.gate import load_router_strategy
    from agentgraph.routing import Router

    strategies = [load_router_strategy(model_dir, slm) for slm in (first, second)]
    cut = Router([strategies[0]])  # the request cut to the artifact's input budget, as its router cuts it
    same, gaps = 0, []
    disagreements: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in names}
    correct: dict[str, list[bool]] = {name: [] for name in names}
    confidence: dict[str, list[float]] = {name: [] for name in names}
    for text, label in rows:
        routed, _ = cut.fit_to_budgets(text)
        answers = []
        for name, strategy in zip(names, strategies, strict=False):
            result, ms = _timed(partial(strategy.choose, routed))
            latencies[name].append(ms)
            correct[name].append(strategy.intents[result.label] == label)
            confidence[name].append(result.probabilities[result.label])
            answers.append(result)
        a, b = answers
        gaps.append(abs(a.probabilities[a.label] - b.probabilities[a.label]))
        if a.label == b.label:
            same += 1
        elif len(disagreements) < 20:
            disagreements.append({"text": text, "label": label, names[0]: a.label, names[1]: b.label})
    return BackendAgreement(
        role="route", backends=names, rows=len(rows), same_answer=same / len(rows), probability_gap_max=max(gaps),
        probability_gap_mean=float(np.mean(gaps)), disagreements=disagreements,
        accuracy={name: float(np.mean(values)) for name, values in correct.items()},
        selective_accuracy_at_coverage={
            name: {f"{c:.2f}": selective_accuracy_at_coverage(np.asarray(confidence[name]), np.asarray(correct[name]), c) for c in (0.8, 0.9, 0.95)}
            for name in names
        },
        latency_ms_p50={name: float(np.percentile(values, 50)) for name, values in latencies.items()},
    )  # fmt: skip


def _extract_agreement(
    model_dir: str | os.PathLike[str], first: SLM, second: SLM, rows: Sequence[tuple[str, Any]], names: tuple[str, str]
) -> BackendAgreement:
    from agentgraph.distill.extract import entity_fields, extracted, load_extraction_artifact, same_entities
    from agentgraph.extraction import Extractor

    extractors = [Extractor(**load_extraction_artifact(model_dir, slm)) for slm in (first, second)]
    schema = extractors[0].schema
    fields = entity_fields(schema)
    same = 0
    disagreements: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in names}
    correct: dict[str, list[bool]] = {name: [] for name in names}
    for text, target in rows:
        expected = schema.model_validate(target).model_dump()
        answers = []
        for name, extractor in zip(names, extractors, strict=True):
            result, ms = _timed(partial(extracted, extractor, text))
            latencies[name].append(ms)
            correct[name].append(same_entities(result, expected, fields))
            answers.append(result)
        if answers[0] == answers[1]:
            same += 1
        elif len(disagreements) < 20:
            disagreements.append({"text": text, "target": target, names[0]: answers[0], names[1]: answers[1]})
    return BackendAgreement(
        role="extract", backends=names, rows=len(rows), same_answer=same / len(rows), disagreements=disagreements,
        accuracy={name: float(np.mean(values)) for name, values in correct.items()},
        latency_ms_p50={name: float(np.percentile(values, 50)) for name, values in latencies.items()},
    )  # fmt: skip
