"""Output validator: check an output before anyone sees it; redact, regenerate or flag what fails.

Checks are small callables that return :class:`Violation` records for a value
(a string, a dict or list, or a pydantic instance; text checks look at every
string in it). Built in: :func:`schema_check`, :func:`pii_check`,
:func:`length_check`, :func:`pattern_check`; any callable with the
:class:`Check` signature can join them.

When a check fails the node works down a fixed list, re-running every check
after each step:

1. ``redact``: mask the spans that redactable violations point at (PII, and
   patterns marked redactable);
2. ``regenerate``: call the caller's ``regenerate(state, rejected, violations)``
   for a new value, at most ``max_regenerations`` times;
3. ``flag``: give up and flag the output for human review: the output key gets
   None and the report keeps the last candidate and the reason, so a graph can
   route to a reviewer (for instance a node that calls ``interrupt``).

Every call ends in one :class:`~agentgraph.records.decisions.Decision` with outcome
``ok``, ``redacted``, ``regenerated`` or ``flagged``.

Example:
    >>> from agentgraph.nodes.output_validator import create_output_validator, length_check, pii_check
    >>> validate = create_output_validator([pii_check(), length_check(max_chars=200)])
    >>> update = validate({"draft": "Sure, write to jo@example.com about order 4587345."}, {})
    >>> update["output"], update["validation"].outcome
    ('Sure, write to [EMAIL] about order 4587345.', 'redacted')
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult
from agentgraph.pii import PII_KINDS, PIIKind, find_pii, redact_spans
from agentgraph.records.decisions import DecisionLog

logger = logging.getLogger(__name__)

Path = tuple[str | int, ...]
"""Where a string sits in a value: () for a plain string, ("items", 0, "name") inside a structure."""


class Span(BaseModel):
    """A stretch of a string that redaction replaces with ``[LABEL]``."""

    label: str
    start: int
    end: int


class Violation(BaseModel):
    """One thing wrong with an output."""

    check: str = Field(description="the name of the check that found it")
    message: str
    path: Path = ()
    redactions: list[Span] = Field(default_factory=list, description="what redaction would mask; empty: not redactable")


class Check(Protocol):
    """A named rule over an output value."""

    @property
    def name(self) -> str: ...

    def __call__(self, value: Any) -> list[Violation]: ...


class Regenerate(Protocol):
    """Produces a replacement for a rejected output, e.g. by asking the model again with the violations."""

    def __call__(self, state: Mapping[str, Any], rejected: Any, violations: list[Violation]) -> Any: ...


class ValidationStep(BaseModel):
    """One action the validator took and the violations left after it."""

    action: Literal["check", "redact", "regenerate"]
    violations: list[Violation]
    error: str | None = None


class ValidationReport(BaseModel):
    """What the validator concluded about an output."""

    passed: bool
    flagged: bool
    outcome: Literal["ok", "redacted", "regenerated", "flagged"]
    reason: str | None = Field(default=None, description="why the output was flagged")
    violations: list[Violation] = Field(description="what the first check found")
    steps: list[ValidationStep]
    candidate: Any = Field(default=None, description="the last value tried, for the reviewer of a flagged output")


def string_leaves(value: Any, path: Path = ()) -> list[tuple[Path, str]]:
    """Every string in ``value`` with its path (pydantic instances are read through ``model_dump``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items() for leaf in string_leaves(item, (*path, key))]
    if isinstance(value, list | tuple):
        return [leaf for index, item in enumerate(value) for leaf in string_leaves(item, (*path, index))]
    return []


def _replace_strings(value: Any, replace: Callable[[Path, str], str], path: Path = ()) -> Any:
    if isinstance(value, str):
        return replace(path, value)
    if isinstance(value, Mapping):
        return {key: _replace_strings(item, replace, (*path, key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_replace_strings(item, replace, (*path, index)) for index, item in enumerate(value))
    return value


def redact(value: Any, violations: Iterable[Violation]) -> Any:
    """``value`` with every redactable violation's spans masked.

    A pydantic instance comes back as a new instance; when masking would make
    it invalid (a masked field has a pattern, say) it comes back unchanged.
    """
    spans: dict[Path, list[Span]] = {}
    for violation in violations:
        for span in violation.redactions:
            kept = spans.setdefault(violation.path, [])
            if all(span.end <= other.start or span.start >= other.end for other in kept):
                kept.append(span)
    if not spans:
        return value

    def mask(path: Path, text: str) -> str:
        return redact_spans(text, [(s.start, s.end, f"[{s.label.upper()}]") for s in spans.get(path, [])])

    if isinstance(value, BaseModel):
        try:
            return type(value).model_validate(_replace_strings(value.model_dump(), mask))
        except ValidationError:
            return value
    return _replace_strings(value, mask)


@dataclass(frozen=True)
class _TextCheck:
    """A check applied to every string of the value."""

    name: str
    find: Callable[[str], list[Violation]]

    def __call__(self, value: Any) -> list[Violation]:
        return [v.model_copy(update={"path": path}) for path, text in string_leaves(value) for v in self.find(text)]


def pii_check(kinds: Sequence[PIIKind] = PII_KINDS, *, name: str = "pii") -> Check:
    """Personal data (see :mod:`agentgraph.pii`); redactable."""

    def find(text: str) -> list[Violation]:
        return [
            Violation(
                check=name,
                message=f"contains {match.kind.replace('_', ' ')}",
                redactions=[Span(label=match.kind, start=match.start, end=match.end)],
            )
            for match in find_pii(text, kinds)
        ]

    return _TextCheck(name, find)


def length_check(*, min_chars: int = 0, max_chars: int | None = None, name: str = "length") -> Check:
    """Every string between ``min_chars`` and ``max_chars`` characters (after stripping whitespace)."""
    if max_chars is not None and max_chars < min_chars:
        raise ValueError(f"max_chars ({max_chars}) is below min_chars ({min_chars})")

    def find(text: str) -> list[Violation]:
        length = len(text.strip())
        if length < min_chars:
            return [Violation(check=name, message=f"{length} characters, fewer than {min_chars}")]
        if max_chars is not None and length > max_chars:
            return [Violation(check=name, message=f"{length} characters, more than {max_chars}")]
        return []

    return _TextCheck(name, find)


def pattern_check(
    patterns: Mapping[str, str | re.Pattern[str]], *, redactable: bool = False, name: str = "forbidden_pattern"
) -> Check:
    """No match of any forbidden regular expression (named, e.g. ``{"internal_url": r"https?://intra\\."}``).

    ``redactable=True`` lets redaction mask the matches (as ``[LABEL]``) instead of
    sending the output on to regeneration or review.
    """
    compiled = {label: re.compile(pattern) for label, pattern in patterns.items()}

    def find(text: str) -> list[Violation]:
        return [
            Violation(
                check=name,
                message=f"matches forbidden pattern {label!r}: {match[0]!r}",
                redactions=[Span(label=label, start=match.start(), end=match.end())] if redactable else [],
            )
            for label, pattern in compiled.items()
            for match in pattern.finditer(text)
        ]

    return _TextCheck(name, find)


@dataclass(frozen=True)
class _SchemaCheck:
    name: str
    schema: type[BaseModel]

    def __call__(self, value: Any) -> list[Violation]:
        try:
            if isinstance(value, str):
                self.schema.model_validate_json(value)
            else:
                self.schema.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
        except ValidationError as exc:
            return [
                Violation(check=self.name, message=error["msg"], path=tuple(error["loc"])) for error in exc.errors()
            ]
        return []


def schema_check(schema: type[BaseModel], *, name: str = "schema") -> Check:
    """The value validates as ``schema`` (a JSON string, a dict or an instance)."""
    return _SchemaCheck(name, schema)


def create_output_validator(
    checks: Sequence[Check],
    *,
    regenerate: Regenerate | None = None,
    max_regenerations: int = 2,
    redact_violations: bool = True,
    decision_log: DecisionLog | None = None,
    input_key: str = "draft",
    output_key: str = "output",
    report_key: str = "validation",
    name: str = "output_validator",
) -> ControlNode:
    """A LangGraph node that validates ``state[input_key]`` and writes the accepted value to ``output_key``.

    Args:
        checks: the rules; a user-supplied one is any callable ``value -> list[Violation]`` with a ``name``.
        regenerate: called for a new value when redaction is not enough; None skips to flagging.
        max_regenerations: the most ``regenerate`` calls per node call.
        redact_violations: mask redactable violations before anything else (False: never change text).
        decision_log: where each call's decision is also written.
        input_key: state key of the value to validate.
        output_key: state key of the accepted value (None when flagged).
        report_key: state key of the :class:`ValidationReport`.
        name: the node name in decision records.

    A missing value (None, blank text or an empty list) raises :class:`~agentgraph.errors.EmptyInputError`
    after a ``rejected`` record is logged.
    """
    if not checks:
        raise ValueError("give the output validator at least one check")
    if max_regenerations < 0:
        raise ValueError("max_regenerations cannot be negative")
    names = [check.name for check in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"check names must be distinct, got {names}")

    def run_checks(value: Any) -> list[Violation]:
        return [violation for check in checks for violation in check(value)]

    def redact_if_possible(value: Any, violations: list[Violation]) -> tuple[Any, list[Violation], bool]:
        if not (redact_violations and any(v.redactions for v in violations)):
            return value, violations, False
        redacted = redact(value, violations)
        return redacted, run_checks(redacted), True

    def review(state: Mapping[str, Any], value: Any) -> tuple[Any, list[ValidationStep]]:
        violations = run_checks(value)
        steps = [ValidationStep(action="check", violations=violations)]
        value, violations, redacted = redact_if_possible(value, violations)
        if redacted:
            steps.append(ValidationStep(action="redact", violations=violations))
        for _ in range(max_regenerations):
            if not violations or regenerate is None:
                break
            try:
                value = regenerate(state, value, violations)
            except Exception as exc:  # the caller's callable failed: the output goes to a reviewer instead
                logger.warning("%s: regenerate failed, flagging for review: %s", name, exc)
                steps.append(ValidationStep(action="regenerate", violations=violations, error=str(exc)))
                break
            value, violations, _ = redact_if_possible(value, run_checks(value))
            steps.append(ValidationStep(action="regenerate", violations=violations))
        return value, steps

    def validate_output(call: NodeCall) -> NodeResult:
        value, steps = review(call.state, call.value)
        remaining = steps[-1].violations
        actions = {step.action for step in steps}
        if remaining:
            outcome = "flagged"
        elif "regenerate" in actions:
            outcome = "regenerated"
        elif "redact" in actions:
            outcome = "redacted"
        else:
            outcome = "ok"
        failed = sorted({v.check for v in remaining})
        report = ValidationReport(
            passed=not remaining,
            flagged=bool(remaining),
            outcome=outcome,
            reason=f"still failing {', '.join(failed)} after {', '.join(s.action for s in steps)}"
            if remaining
            else None,
            violations=steps[0].violations,
            steps=steps,
            candidate=value if remaining else None,
        )
        return NodeResult(
            {output_key: None if remaining else value, report_key: report},
            output=None if remaining else value,
            strategy={"ok": "checks", "redacted": "redact", "regenerated": "regenerate", "flagged": "human"}[outcome],
            escalated=bool(remaining),
            outcome=outcome,
            metadata={"report": report.model_dump(mode="json", exclude={"candidate"})},
        )

    return ControlNode(
        validate_output, name=name, kind="validate", input_key=input_key, what="output", reads="value",
        decision_log=decision_log, metadata={"checks": names},
    )  # fmt: skip
