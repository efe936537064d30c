"""Canary: a share of one node's traffic served by a candidate model, compared with the current one.

:func:`create_canary` takes two :class:`~agentgraph.nodes.kernel.ControlNode` s that play one
role (the same name, kind, input and destinations): ``current``, the one serving now, and
``candidate`` (a newly distilled model, say). A share of the requests, drawn by a hash of the
thread (a conversation stays on one model) or, without one, of the input, is served by the
candidate; for those the current model decides too, off the record, and the candidate's
decision carries the comparison under ``metadata["canary"]``::

    {"candidate": <label>, "agree": bool, "current_output": ..., "candidate_ms": ..., "current_ms": ...}

Everything else is the current node's, as without a canary. A candidate that raises is a
failed canary request, never a failed turn: the current model's decision serves, with
``{"candidate": <label>, "agree": False, "error": "..."}``. The candidate's decisions are
logged and shadowed with the teacher like any other (a ``shadow`` record names its decision
in ``shadow_of``), and their turns get outcomes by the same rules, so
:func:`agentgraph.distill.canary.judge_canary` can weigh the candidate against the current
model and promote it or roll it back.

Example:
    >>> from agentgraph.nodes.canary import create_canary
    >>> from agentgraph.nodes.kernel import ControlNode, NodeResult
    >>> def node(answer):
    ...     return ControlNode(lambda call: NodeResult({"label": answer}, output=answer), name="tagger", kind="tag")
    >>> canary = create_canary(node("billing"), node("refund"), share=0.5, label="tagger-v2")
    >>> served = [canary({"text": f"request {n}"}, {})["decisions"][0] for n in range(40)]
    >>> sorted({d.output for d in served}), 10 < sum("canary" in d.metadata for d in served) < 30
    (['billing', 'refund'], True)
    >>> next(d.metadata["canary"] for d in served if "canary" in d.metadata)["agree"]
    False
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from agentgraph.errors import ConfigError
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult
from agentgraph.shadow import CANARY_KEY, hashed_draw

logger = logging.getLogger(__name__)

SAME_ROLE = ("name", "kind", "input_key", "reads", "destinations", "default_mode")
"""What the current and the candidate node must share to stand in for each other."""


def create_canary(
    current: ControlNode, candidate: ControlNode, *, share: float, label: str, seed: int = 0
) -> ControlNode:
    """A node that serves ``share`` of the requests with ``candidate`` and the rest with ``current``.

    Args:
        current: the node serving the role now; its decision log, shadow evaluator, mode and
            metadata are the canary's.
        candidate: the same role on the candidate model.
        share: the part of the traffic the candidate serves, between 0 and 1.
        label: names the candidate in its decisions (its artifact's folder, say).
        seed: another seed draws other requests.
    """
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"a canary's share is between 0 and 1, not {share!r}")
    for attribute in SAME_ROLE:
        if getattr(current, attribute) != getattr(candidate, attribute):
            raise ConfigError(
                f"the canary's candidate differs from the current node in {attribute} "
                f"({getattr(candidate, attribute)!r}, not {getattr(current, attribute)!r}): build both for one role"
            )

    def served_by_candidate(call: NodeCall) -> bool:
        return hashed_draw(seed, current.name, call.thread_id or call.value) < share

    def compared(served: NodeResult, served_ms: float, baseline: NodeResult, baseline_ms: float) -> NodeResult:
        agree = _canonical(served.output) == _canonical(baseline.output)
        comparison = {"candidate": label, "agree": agree, "current_output": baseline.output,
                      "candidate_ms": round(served_ms, 3), "current_ms": round(baseline_ms, 3)}  # fmt: skip
        served.metadata = {**candidate.metadata, **served.metadata, CANARY_KEY: comparison}
        return served

    def failed(baseline: NodeResult, exc: Exception) -> NodeResult:
        logger.warning("%s: the canary candidate %s failed (%s); the current model serves", current.name, label, exc)
        baseline.metadata = {**baseline.metadata,
                             CANARY_KEY: {"candidate": label, "agree": False, "error": f"{type(exc).__name__}: {exc}"}}  # fmt: skip
        return baseline

    def decide(call: NodeCall) -> NodeResult:
        if not served_by_candidate(call):
            return current.decide(call)
        started = time.perf_counter()
        try:
            served = candidate.decide(call)
        except Exception as exc:  # noqa: BLE001 - any failure of the candidate is the canary's finding
            return failed(current.decide(call), exc)
        served_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        baseline = current.decide(call)
        return compared(served, served_ms, baseline, (time.perf_counter() - started) * 1000)

    async def adecide(call: NodeCall) -> NodeResult:
        if not served_by_candidate(call):
            return await current.decide_async(call)
        started = time.perf_counter()
        try:
            served = await candidate.decide_async(call)
        except Exception as exc:  # noqa: BLE001 - as in decide
            return failed(await current.decide_async(call), exc)
        served_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        baseline = await current.decide_async(call)
        return compared(served, served_ms, baseline, (time.perf_counter() - started) * 1000)

    return ControlNode(
        decide, adecide=adecide, name=current.name, kind=current.kind, input_key=current.input_key,
        what=current.what, reads=current.reads, max_input_chars=current.max_input_chars,
        decision_log=current.decision_log, mode=current.mode, default_mode=current.default_mode,
        shadow=current.shadow, destinations=current.destinations, metadata=current.metadata,
    )  # fmt: skip


def _canonical(output: Any) -> str:
    return json.dumps(output, sort_keys=True, default=str)
