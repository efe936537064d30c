"""What a message does: asks for something, asks whether it could be done, reports, declines, or greets.

A router that only reads the topic hears "cancel" in "my order got cancelled",
"Do NOT cancel order 48213" and "can I cancel after it ships?", and sends all
three to the cancellation. The topic says which action a message is about; its
act says whether the customer asks for it (:data:`RequestAct`):

- ``request``: asks for something to be done or answered now ("cancel order
  4521", "where is my parcel?", "mujhe refund chahiye");
- ``question``: asks whether or how an action could be done, without asking
  for it ("can I cancel after it ships?", "what happens if I delete my account?");
- ``statement``: reports something and asks for nothing ("my order got
  cancelled", "refund received", "payment done");
- ``negation``: declines or withdraws an action ("do not cancel my order",
  "cancel mat karo", "I changed my mind, keep my account");
- ``social``: greetings, thanks, goodbyes, "ok".

:class:`ActDetector` reads the act with a trained classifier (an
:class:`~agentgraph.classifier.IntentClassifier` over these five labels, on the
same sentence encoder as the router) and, beside it, looks for negation cues:
words that decline or withdraw something ("do not", "never", "mat", "changed my
mind"), which a classifier of wording can miss, since "do not cancel my order"
is one word away from "cancel my order". A cue does not decide the act (in "I
don't want this item, cancel order 7322" the negation is the reason for the
request); it tells an action that the message is not a plain request, so a write
asks first (see :mod:`agentgraph.write_safety`). The cues are regular
expressions (:class:`ActCues`), English with common code-mixed forms by default.

Example:
    >>> from agentgraph.acts import ActCues
    >>> cues = ActCues()
    >>> cues.negation_cue("Do NOT cancel order 48213"), cues.negation_cue("order cancel mat karo")
    ('Do NOT cancel order 48213', 'cancel mat')
    >>> cues.negation_cue("I don't know how to cancel my order") is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal, cast, get_args

from pydantic import BaseModel, Field

from agentgraph.classifier import IntentClassifier, SentenceEncoder

RequestAct = Literal["request", "question", "statement", "negation", "social"]
REQUEST_ACTS: tuple[RequestAct, ...] = get_args(RequestAct)
NON_REQUESTS: frozenset[RequestAct] = frozenset({"statement", "negation", "social"})
"""Acts that ask for nothing: a message doing one of these is never served as a request."""

_NEGATORS = (
    r"do\s+not|don'?t|dont|dnt|never|no\s+need\s+(?:to|for)|not\s+interested\s+in|no\s+longer"
    r"|hold\s+off(?:\s+on)?|forget\s+(?:about\s+)?|never\s*mind(?:\s+about)?|disregard|withdraw|take\s+back"
    r"|no\s+quiero|no\s+(?:borres|canceles|cambies)|n[ãa]o\s+(?:quero|precisa|cancele)|ne\s+pas|n'\w+\s+pas"
)
_AFTER_NEGATOR_NOT_NEGATION = (
    r"(?:know|have|has|see|find|remember|understand|receiv|get|got|work|load|show|like|think|care|arriv|deliver"
    r"|reach|come|let|allow|accept)\w*"
)
_POSTPOSITION_NEGATORS = (
    r"mat|na\s+karo|nahi\s+karna|nahi\s+chahiye|rehne\s+do|rahne\s+do|rok\s+do|bhool\s+jao|mat\s+karo"
)
_WITHDRAWALS = (
    r"changed\s+my\s+mind|keep\s+(?:it|the\s+order|my\s+order|my\s+account)\b|as\s+it\s+is\b|ignore\s+my"
    r"|cancel\s+(?:my|the)\s+cancell?ation|(?:skip|stop)\s+the\s+(?:cancell?ation|refund|change)|wapas\s+le\s+lo"
)


class ActCues(BaseModel):
    """Regular expressions for words that decline or withdraw something ("do not", "cancel mat karo", "changed my mind").

    ``negators`` precede the action ("do not cancel"), unless followed by one of
    ``not_negating`` ("I don't know how to cancel" asks for help);
    ``postposition_negators`` follow it ("cancel mat karo"); ``withdrawals``
    decline on their own ("I changed my mind"). Matched case-insensitively.
    """

    negators: str = _NEGATORS
    not_negating: str = _AFTER_NEGATOR_NOT_NEGATION
    postposition_negators: str = _POSTPOSITION_NEGATORS
    withdrawals: str = _WITHDRAWALS

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[str], ...]:
        flags = re.IGNORECASE
        return (
            re.compile(rf"\b(?:{self.negators})\b(?!\s+(?:{self.not_negating})\b)(?:\s+\w+){{0,3}}", flags),
            re.compile(rf"\b\w+\s+(?:{self.postposition_negators})\b", flags),
            re.compile(rf"\b(?:{self.withdrawals})", flags),
        )

    def negation_cue(self, text: str) -> str | None:
        """The words of ``text`` that decline an action, or None.

        For a negator, the cue runs up to three words on (its scope), so the
        cue shows what is declined.
        """
        for pattern in self._patterns:
            if match := pattern.search(text):
                return match[0].strip()
        return None


class ActVerdict(BaseModel):
    """What one message does, how sure the detector is, and whether it holds words that decline something."""

    act: RequestAct
    confidence: float = Field(description="the classifier's calibrated probability of the act")
    negation_cue: str | None = Field(
        default=None, description="words of the message that decline or withdraw something"
    )
    probabilities: dict[str, float] = Field(default_factory=dict, description="the classifier's, over the acts")

    @property
    def asks(self) -> bool:
        """Whether the message asks for anything (a request or a question)."""
        return self.act not in NON_REQUESTS


class ActDetector:
    """The act of a message (:data:`RequestAct`) by the trained classifier, with the negation cue it holds, if any.

    Args:
        classifier: an :class:`~agentgraph.classifier.IntentClassifier` whose labels are acts
            (see :meth:`train`).
        cues: the negation patterns.
    """

    def __init__(self, classifier: IntentClassifier, *, cues: ActCues | None = None) -> None:
        unknown = set(classifier.labels) - set(REQUEST_ACTS)
        if unknown:
            raise ValueError(f"an act classifier's labels are acts ({', '.join(REQUEST_ACTS)}), not {sorted(unknown)}")
        self.classifier = classifier
        self.cues = cues or ActCues()

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        acts: Sequence[RequestAct],
        *,
        encoder: SentenceEncoder | None = None,
        cues: ActCues | None = None,
        lexical_weight: float = 1.0,
    ) -> ActDetector:
        """Train the classifier on ``texts`` labelled with their ``acts``.

        The character n-grams weigh fully (``lexical_weight=1.0``, where the
        router's topic classifier uses 0.3): an act shows in small words and
        endings ("got", "-ed", "ho gaya", "?") that a sentence embedding blurs.
        Keep the classes roughly balanced: requests are the easy majority.
        """
        classifier = IntentClassifier.train(
            texts, acts, encoder=encoder, lexical_weight=lexical_weight,
            target_selective_accuracy=0.95, max_gate_rejection=0.5,
        )  # fmt: skip
        return cls(classifier, cues=cues)

    @classmethod
    def load(
        cls, folder: str | Path, *, encoder: SentenceEncoder | None = None, cues: ActCues | None = None
    ) -> ActDetector:
        return cls(IntentClassifier.load(folder, encoder=encoder), cues=cues)

    def save(self, folder: str | Path) -> Path:
        return self.classifier.save(folder)

    def detect(self, text: str) -> ActVerdict:
        """The act of ``text`` (already cleaned)."""
        prediction = self.classifier.predict(text, detect_scope=False)
        return ActVerdict(
            act=cast(RequestAct, prediction.label),  # trained on RequestActs; ActVerdict still validates it
            confidence=prediction.confidence, negation_cue=self.cues.negation_cue(text),
            probabilities=prediction.probabilities,
        )  # fmt: skip
