"""The consequence classes of tool calls, and how a call gets one: MCP annotations, the policy table, the SLM, the LLM.

Five classes (:class:`Consequence`): ``safe`` (read-only), ``retry_safe`` (idempotent with a key),
``retry_unsafe`` (changes something each time), ``irreversible`` (waits for a person) and ``unknown``
(the LLM decides, else it is irreversible). :func:`classify_tool_call` gives a call its class;
:mod:`agentgraph.nodes.consequence` describes what each class means when the call runs.

Sources, in order: MCP tool annotations (``readOnlyHint``, ``destructiveHint``,
``idempotentHint``, ``openWorldHint``), read from ``tool.metadata`` where
langchain-mcp-adapters puts them (flat) or under ``metadata["annotations"]``;
the :class:`ConsequencePolicy` table; the SLM for tools neither declares.
Annotations come from the tool's server and are untrusted: for a tool in the
policy table they can only make a call more cautious, never less. A tool the
table does not list is classified by its annotations alone, so list every tool
of a server you do not trust.

Example:
    >>> policy = ConsequencePolicy(tools={"delete_*": "irreversible", "get_order": "safe"})
    >>> policy.lookup("delete_user").value, policy.lookup("get_order").value, policy.lookup("send_mail")
    ('irreversible', 'safe', None)
    >>> consequence_from_hints({"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True}).value
    'retry_safe'
    >>> most_cautious(Consequence.SAFE, None, Consequence.RETRY_UNSAFE).value
    'retry_unsafe'
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from agentgraph.errors import ConfigError, SLMError
from agentgraph.idempotency import canonical_json
from agentgraph.llm import escalate
from agentgraph.nodes.tool_calls import arguments_schema
from agentgraph.prompting import render_prompt
from agentgraph.slm.base import Usage
from agentgraph.text import clean_text, truncate_to_tokens

if TYPE_CHECKING:
    from agentgraph.slm import SLM


HINT_FIELDS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")

# Room left in the SLM's context for the label list and the chosen label.
_LABEL_LIST_TOKENS = 256


class Consequence(StrEnum):
    """What running a tool call would do to the world (see the module docstring)."""

    SAFE = "safe"
    RETRY_SAFE = "retry_safe"
    RETRY_UNSAFE = "retry_unsafe"
    IRREVERSIBLE = "irreversible"
    UNKNOWN = "unknown"


CAUTION_ORDER = (Consequence.SAFE, Consequence.RETRY_SAFE, Consequence.RETRY_UNSAFE, Consequence.IRREVERSIBLE)
"""The final classes, least cautious first."""

CONSEQUENCE_DESCRIPTIONS = {
    Consequence.SAFE.value: "only reads or computes; changes nothing anywhere",
    Consequence.RETRY_SAFE.value: "changes something, but repeating the same call changes nothing more",
    Consequence.RETRY_UNSAFE.value: "changes something each time it runs, such as a charge, a message or a new record",
    Consequence.IRREVERSIBLE.value: "deletes, pays out, or does something else that cannot be undone",
}
"""What each final class means, as the SLM and the LLM are shown it."""

_LABEL_PATTERN = re.compile(r"\b(" + "|".join(CONSEQUENCE_DESCRIPTIONS) + r")\b")


def most_cautious(*classes: Consequence | None) -> Consequence:
    """The most cautious of the final classes given (None and ``unknown`` are ignored)."""
    ranked = [c for c in classes if c in CAUTION_ORDER]
    if not ranked:
        raise ValueError("need at least one final class")
    return max(ranked, key=CAUTION_ORDER.index)


class ConsequencePolicy(BaseModel):
    """The operator's table of tool classes, and how sure the SLM must be.

    ``tools`` maps a tool name, or an ``fnmatch`` pattern such as ``"delete_*"``,
    to a class; an exact name wins over patterns, patterns are tried in order.
    Mapping a tool to ``unknown`` sends its calls straight to the LLM. ``editable`` lists, per
    tool, what a person may change when they edit a call put to them for approval.
    """

    tools: dict[str, Consequence] = Field(default_factory=dict)
    confidence_threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="below this SLM probability the call is unknown and goes to the LLM"
    )
    editable: dict[str, frozenset[str]] = Field(
        default_factory=dict,
        description="per tool name, the arguments a person may change when they edit a call for approval "
        "(within the bounds of the tool's schema); nothing else is editable, so an edit can fix an amount, "
        "never redirect the call to another customer's order or account",
    )

    def lookup(self, tool_name: str) -> Consequence | None:
        if tool_name in self.tools:
            return self.tools[tool_name]
        return next((c for pattern, c in self.tools.items() if fnmatch.fnmatchcase(tool_name, pattern)), None)

    def editable_arguments(self, tool_name: str) -> frozenset[str]:
        """What an edit of a ``tool_name`` call may change (an exact name; by default nothing)."""
        return self.editable.get(tool_name, frozenset())

    def check_editable(self, tools_by_name: Mapping[str, BaseTool]) -> None:
        """Raise :class:`~agentgraph.errors.ConfigError` where ``editable`` lists an argument a tool does not
        take: a typo that would silently make nothing editable. Tools not given are skipped (one policy may
        serve the tools of several nodes)."""
        for tool_name, arguments in self.editable.items():
            if tool_name not in tools_by_name:
                continue
            if unknown := arguments - set(arguments_schema(tools_by_name[tool_name]).get("properties", {})):
                raise ConfigError(
                    f"policy.editable lists {sorted(unknown)} for {tool_name}, which takes no such arguments; "
                    "name arguments of its schema"
                )


def tool_hints(tool: BaseTool) -> dict[str, bool]:
    """The MCP annotations a tool declares: flat in ``tool.metadata`` or under ``metadata["annotations"]``."""
    metadata = tool.metadata or {}
    sources = (metadata.get("annotations") or {}, metadata)
    return {field: source[field] for source in sources for field in HINT_FIELDS if isinstance(source.get(field), bool)}


def consequence_from_hints(hints: Mapping[str, bool]) -> Consequence | None:
    """The class MCP annotations imply, with the MCP defaults for hints left out; None without hints.

    ``openWorldHint`` does not change the class: an open-world write is judged
    by the same destructive and idempotent hints.
    """
    if not hints:
        return None
    if hints.get("readOnlyHint", False):
        return Consequence.SAFE
    if hints.get("destructiveHint", True):
        return Consequence.IRREVERSIBLE
    return Consequence.RETRY_SAFE if hints.get("idempotentHint", False) else Consequence.RETRY_UNSAFE


class ConsequenceVerdict(BaseModel):
    """How one tool call was classified, and why."""

    consequence: Consequence = Field(description="a final class, never unknown")
    strategy: Literal["policy", "annotations", "slm", "llm", "fallback"]
    reason: str
    confidence: float | None = Field(
        default=None, description="the SLM's calibrated probability of its class; None for declared classes"
    )
    probabilities: dict[str, float] | None = Field(default=None, description="the SLM's, after calibration")
    hints: dict[str, bool] = Field(default_factory=dict)
    escalated: bool = False
    model: str | None = None
    latency_ms: float = 0.0
    usage: Usage | None = Field(default=None, description="what the SLM's call cost, when the SLM was asked")


def classify_tool_call(
    tool: BaseTool,
    arguments: Mapping[str, Any],
    *,
    policy: ConsequencePolicy,
    slm: SLM | None = None,
    llm: BaseChatModel | None = None,
) -> ConsequenceVerdict:
    """Classify a call of ``tool`` with ``arguments`` by what running it would do.

    The policy table (with annotations that can only raise caution), else the annotations,
    else the SLM: its label probabilities from token log-probs, calibrated against its
    content-free prior (:func:`calibrate`); below ``policy.confidence_threshold`` the call is
    unknown and the LLM decides, or, without a usable LLM answer, it is irreversible.

    Example:
        >>> from langchain_core.tools import tool
        >>> @tool
        ... def get_order(order_id: str) -> str:
        ...     '''Look an order up.'''
        ...     return "shipped"
        >>> get_order.metadata = {"readOnlyHint": True}
        >>> verdict = classify_tool_call(get_order, {"order_id": "A1"}, policy=ConsequencePolicy())
        >>> verdict.consequence.value, verdict.strategy
        ('safe', 'annotations')
        >>> strict = ConsequencePolicy(tools={"get_order": "retry_unsafe"})
        >>> classify_tool_call(get_order, {"order_id": "A1"}, policy=strict).consequence.value
        'retry_unsafe'
    """
    started = time.perf_counter()
    hints = tool_hints(tool)
    hinted = consequence_from_hints(hints)
    declared = policy.lookup(tool.name)
    if declared is not None and declared is not Consequence.UNKNOWN:
        final = most_cautious(declared, hinted)
        raised = f"; its annotations raise it to {final.value}" if final is not declared else ""
        return ConsequenceVerdict(
            consequence=final, strategy="policy", reason=f"the policy lists it as {declared.value}{raised}", hints=hints
        )
    if declared is None and hinted is not None:
        return ConsequenceVerdict(
            consequence=hinted,
            strategy="annotations",
            reason=f"its annotations {hints} imply {hinted.value}",
            hints=hints,
        )
    prompt = _describe_call(tool, arguments)
    probabilities = None
    model = None
    usage: Usage | None = None
    if declared is Consequence.UNKNOWN:
        why_unsure = "the policy lists it as unknown"
    elif slm is None:
        why_unsure = "it is undeclared and no SLM is configured"
    else:
        try:  # token counting talks to the SLM too: an outage there is an SLM failure like any other
            prior = content_free_prior(slm)
            fitted = truncate_to_tokens(
                prompt, max_tokens=slm.max_context_tokens - _LABEL_LIST_TOKENS, count_tokens=slm.count_tokens
            )[0]
            choice = slm.choose(fitted, CONSEQUENCE_DESCRIPTIONS)
        except SLMError as exc:
            why_unsure = f"the SLM failed: {exc}"
        else:
            probabilities, model = calibrate(choice.probabilities, prior), choice.usage.model
            slm_class = Consequence(max(probabilities, key=probabilities.__getitem__))
            confidence = probabilities[slm_class]
            if confidence >= policy.confidence_threshold:
                return ConsequenceVerdict(
                    consequence=slm_class,
                    strategy="slm",
                    reason=f"the SLM judged it {slm_class.value} (calibrated p={confidence:.2f})",
                    confidence=confidence,
                    probabilities=probabilities,
                    model=model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    usage=choice.usage,
                )
            usage = choice.usage
            why_unsure = f"the SLM was unsure (calibrated p={confidence:.2f} for {slm_class.value})"
    verdict = _llm_verdict(prompt, llm, why_unsure)
    return verdict.model_copy(
        update={
            "consequence": most_cautious(verdict.consequence, hinted),
            "probabilities": probabilities,
            "hints": hints,
            "model": verdict.model or model,
            "latency_ms": (time.perf_counter() - started) * 1000,
            "usage": usage,
        }
    )


@lru_cache(maxsize=8)
def content_free_prior(slm: SLM) -> dict[str, float]:
    """The SLM's class probabilities for a call with no content: its bias, to divide out of its answers.

    One SLM call per model (cached): the scoring is deterministic.
    """
    prompt = render_prompt("consequence", tool="N/A", description="N/A", arguments="N/A")
    return slm.choose(prompt, CONSEQUENCE_DESCRIPTIONS).probabilities


def calibrate(probabilities: Mapping[str, float], prior: Mapping[str, float]) -> dict[str, float]:
    """Contextual calibration (Zhao et al., 2021): ``probabilities`` over the content-free ``prior``, renormalised.

    A small model's label scores carry a strong bias of their own (the packaged SLM gives
    ``safe`` 0.96 for a call with no content); dividing it out leaves what the call itself
    moved. A class the model favours for any input thus needs more evidence to win.

    Example:
        >>> calibrate({"safe": 0.9, "irreversible": 0.1}, {"safe": 0.9, "irreversible": 0.1})
        {'safe': 0.5, 'irreversible': 0.5}
    """
    weights = {label: p / prior[label] for label, p in probabilities.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


def _describe_call(tool: BaseTool, arguments: Mapping[str, Any]) -> str:
    """The ``consequence`` prompt for the call (the SLM gets it cut to its context, the LLM whole)."""
    return render_prompt(
        "consequence",
        tool=tool.name,
        description=clean_text(tool.description or "(none)"),
        arguments=clean_text(canonical_json(dict(arguments))),
    )


def _llm_verdict(prompt: str, llm: BaseChatModel | None, why_unsure: str) -> ConsequenceVerdict:
    """The LLM's label for the call; without a usable one, the most cautious class."""
    question = f"{prompt}\n\n{render_prompt('choice', options=CONSEQUENCE_DESCRIPTIONS)}"
    answer = escalate(llm, question, reason=why_unsure)
    if not isinstance(answer, AIMessage):
        return ConsequenceVerdict(
            consequence=Consequence.IRREVERSIBLE,
            strategy="fallback",
            reason=f"{answer.reason}; treated as irreversible until a person approves",
            escalated=llm is not None,
        )
    labels = set(_LABEL_PATTERN.findall(answer.text.lower()))
    model = (answer.response_metadata or {}).get("model_name")
    if len(labels) == 1:
        consequence, strategy = Consequence(labels.pop()), "llm"
        reason = f"{why_unsure}; the LLM judged it {consequence.value}"
    else:
        consequence, strategy = Consequence.IRREVERSIBLE, "fallback"
        reason = f"{why_unsure}; the LLM answered {answer.text[:200]!r}, not one class; treated as irreversible"
    return ConsequenceVerdict(consequence=consequence, strategy=strategy, reason=reason, escalated=True, model=model)
