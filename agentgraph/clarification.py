"""Clarifying questions: ask the customer instead of guessing, and route the answer with the question's context.

Real messages are often under-specified: "order no 55102", "refund",
"cancel 48213". Guessing the intent of a fragment is how a statement ends up
cancelling an order; sending it to the LLM is how the LLM ends up taking most
traffic. The router asks a short question instead, written from templates
(never by the LLM), and keeps it in the thread's state as a
:class:`Clarification`. The next message on the thread is read as its answer
when it is one (:meth:`ClarificationPolicy.resolve`), and routed with the
original request, so "cancel it" after "What would you like me to do with
order 55102: track it, change it or cancel it?" is the cancellation of 55102.

Kinds of question (:attr:`Clarification.kind`):

- ``choose``: several actions fit; the answer picks one (by name, by number, or
  in its own words);
- ``confirm``: one action fits but the message does not ask for it plainly
  ("Shall I cancel order 48213?"); a yes runs it, a no cancels it;
- ``reference``: the action is clear but its target is not ("Which order should
  I cancel?"); an answer naming the target completes the request;
- ``acknowledge``: the message asks for nothing (a report, a refusal, thanks);
  the reply says so and waits for nothing;
- ``greet``: a greeting, answered with one.

:class:`ClarificationPolicy` holds everything domain-specific: how each label's
action reads in a question (``actions``, with ``{it}`` standing for its
target), what a reference looks like (:class:`ReferencePattern`), and which
actions a bare reference offers.

Example:
    >>> policy = ClarificationPolicy(
    ...     actions={"track_order": "track {it}", "cancel_order": "cancel {it}"},
    ...     reference=ReferencePattern(pattern=r"\\d{4,}", name="order {}", default="your order"),
    ...     reference_candidates=["track_order", "cancel_order"],
    ... )
    >>> policy.is_reference_only("order no 55102")
    True
    >>> question = policy.choose(["track_order", "cancel_order"], request="order no 55102")
    >>> question.question
    'What would you like me to do with order 55102: track it or cancel it?'
    >>> answer = policy.resolve(question, "cancel it")
    >>> answer.label, answer.text, answer.consent
    ('cancel_order', 'order no 55102. cancel it', 'chosen')
    >>> policy.confirm("cancel_order", request="cancel 48213").question
    'Shall I cancel order 48213?'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, Field

from agentgraph.perturb import FILLER_WORDS

ClarificationKind = Literal["choose", "confirm", "reference", "acknowledge", "greet"]
AWAITING_ANSWER: frozenset[ClarificationKind] = frozenset({"choose", "confirm", "reference"})

YES_WORDS = frozenset(
    """yes y yeah yea yep yup ya ok okay k sure confirm confirmed correct haan ha han ji si sí oui sim claro 👍 ✅""".split()
)
"""Words that say yes; an answer is a yes when it holds one, no ``NO_WORDS``, and else only :data:`YES_COMPANIONS`."""
YES_COMPANIONS = frozenset(
    """please pls plz do it go ahead that's that is fine right proceed kar karo do dijiye theek thik hai bhai sir
    thanks thank you . ! , go on sounds good""".split()
)
NO_WORDS = frozenset("""no nope nah not don't dont never nahi nai na mat non não stop wait ❌ 👎""".split())
ORDINALS: dict[str, int] = {
    "1": 0, "first": 0, "1st": 0, "one": 0,
    "2": 1, "second": 1, "2nd": 1, "two": 1,
    "3": 2, "third": 2, "3rd": 2, "three": 2,
}  # fmt: skip
BARE_WORDS = frozenset(
    """my the a an is it its it's this that here please pls plz hi hello hey sir madam mam ji bhai dear thanks thx ok
    okay""".split()
)
"""Words that may stand beside a reference in a bare one ("hi, my order no is 55102 pls")."""
GREETING_WORDS = frozenset(
    """hi hii hiii hello helo hey heya hola namaste namaskar hallo bonjour ola olá morning evening afternoon
    good dear team sir madam""".split()
)
_TOKEN = re.compile(r"[\w'’]+|[^\w\s]", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


class ReferencePattern(BaseModel):
    """How a message names the thing an action is about (an order number, say), and how a question names it."""

    pattern: str = Field(description="a regular expression matching one reference")
    name: str = Field(description="how a question names a reference: '{}' is replaced by it, e.g. 'order {}'")
    default: str = Field(description="how a question names the target when the message gives none, e.g. 'your order'")
    words: frozenset[str] = Field(
        default=frozenset({"order", "no", "number", "id", "num", "#", ":", "is", "my", "ref", "reference"}),
        description="words that only introduce a reference ('order no'); a message of these and a reference is bare",
    )

    @cached_property
    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


class Clarification(BaseModel):
    """A question the router asked; while it awaits an answer, the thread's next message is read as one."""

    kind: ClarificationKind
    question: str = Field(description="what the customer is asked (or told)")
    candidates: list[str] = Field(
        default_factory=list, description="the labels an answer can pick, in the question's order"
    )
    request: str = Field(description="the message that raised the question")
    reference: str | None = Field(
        default=None, description="the target the question is about, when the request named one"
    )
    consent: bool = Field(
        default=False, description="a reference answer completes a request that asked for the write itself"
    )

    @property
    def awaits_answer(self) -> bool:
        return self.kind in AWAITING_ANSWER


class ClarifiedRequest(BaseModel):
    """An answer read in the context of its question: the label it picks and the request to serve."""

    label: str
    text: str = Field(description="the original request with the answer, as the route's nodes should read it")
    consent: Literal["confirmed", "chosen", "requested"] | None = Field(
        default=None, description="how the customer agreed to a write, when the answer agrees to one"
    )


class ClarificationPolicy(BaseModel):
    """How the router asks, and how it reads the answers (see the module docstring).

    Args:
        actions: ``{label: phrase}`` for questions, ``{it}`` standing for the target
            ("cancel {it}" reads "cancel order 48213", "cancel it" or "cancel your order").
        reference: what a reference looks like; None: messages have no references.
        reference_candidates: the labels a bare reference ("order no 55102") offers.
        max_candidates: the most actions one question offers.
        route: the graph node that delivers the question.
    """

    actions: dict[str, str] = Field(default_factory=dict)
    reference: ReferencePattern | None = None
    reference_candidates: list[str] = Field(default_factory=list)
    max_candidates: int = Field(default=3, ge=2)
    route: str = "clarify"
    greeting: str = "Hello! How can I help you?"
    acknowledgement: str = "Thanks for letting me know. Is there anything I can help you with?"
    choose_template: str = "What would you like me to do{about}: {options}?"
    confirm_template: str = "Shall I {action}?"
    reference_template: str = "Which {noun} should I {action}?"
    reference_fallback_template: str = "Which {noun} do you mean?"
    decline_template: str = "Understood, I will not {action}. Is there anything else I can help you with?"
    declined_template: str = "All right, I have not done anything. Is there anything else I can help you with?"
    offer_template: str = "Thanks for letting me know. Would you like me to {action}?"

    def references(self, text: str) -> list[str]:
        """The references ``text`` names, in order, each once."""
        if self.reference is None:
            return []
        return list(dict.fromkeys(self.reference.compiled.findall(text)))

    def is_reference_only(self, text: str) -> bool:
        """Whether ``text`` is a reference and nothing else ("55102", "order no 55102?")."""
        if self.reference is None or not self.references(text):
            return False
        rest = self.reference.compiled.sub(" ", text)
        ignored = self.reference.words | BARE_WORDS
        return all(token in ignored or not token.isalnum() for token in _tokens(rest))

    def action(self, label: str, target: str) -> str:
        """The action of ``label`` on ``target``, as a question says it."""
        return self.actions.get(label, label.replace("_", " ")).replace("{it}", target)

    def _target(self, reference: str | None) -> str:
        if self.reference is None:
            return "it"
        return self.reference.name.format(reference) if reference else self.reference.default

    def choose(self, candidates: Sequence[str], *, request: str) -> Clarification:
        """Which of ``candidates`` the customer wants ("... track it, change it or cancel it?")."""
        reference = next(iter(self.references(request)), None)
        target = "it" if reference else self._target(None)
        options = [self.action(label, target) for label in candidates[: self.max_candidates]]
        listed = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
        about = f" with {self._target(reference)}" if reference else ""
        return Clarification(
            kind="choose", question=self.choose_template.format(about=about, options=listed),
            candidates=list(candidates[: self.max_candidates]), request=request, reference=reference,
        )  # fmt: skip

    def confirm(self, label: str, *, request: str) -> Clarification:
        """Whether to go ahead with ``label`` ("Shall I cancel order 48213?")."""
        references = self.references(request)
        reference = references[0] if len(references) == 1 else None
        return Clarification(
            kind="confirm", question=self.confirm_template.format(action=self.action(label, self._target(reference))),
            candidates=[label], request=request, reference=reference,
        )  # fmt: skip

    def which(self, label: str, *, request: str, consent: bool, options: Sequence[str] = ()) -> Clarification:
        """Which target ``label`` should act on, optionally listing ``options`` ("Which order: 53090 or 48213?")."""
        noun = self.reference.default.removeprefix("your ") if self.reference else "one"
        phrase = self.actions.get(label, "")
        question = (
            self.reference_template.format(noun=noun, action=phrase.removesuffix(" {it}")) if phrase.endswith(" {it}")
            else self.reference_fallback_template.format(noun=noun)
        )  # fmt: skip
        if options:
            question = f"{question[:-1]}: {' or '.join(options)}?"
        return Clarification(kind="reference", question=question, candidates=[label], request=request, consent=consent)

    def acknowledge(self, label: str | None, *, request: str, declined: bool, offer: bool) -> Clarification:
        """The reply to a message that asks for nothing: it declines ``label``, or reports; ``offer`` asks about ``label``."""
        references = self.references(request)
        target = self._target(references[0] if len(references) == 1 else None)
        if declined and label is not None:
            question = self.decline_template.format(action=self.action(label, target))
        elif offer and label is not None:
            question = self.offer_template.format(action=self.action(label, target))
            return Clarification(kind="choose", question=question, candidates=[label], request=request)
        else:
            question = self.acknowledgement
        return Clarification(kind="acknowledge", question=question, request=request)

    def declined(self, *, request: str) -> Clarification:
        """The reply to an answer that says no: nothing was done."""
        return Clarification(kind="acknowledge", question=self.declined_template, request=request)

    def greet(self, *, request: str) -> Clarification:
        return Clarification(kind="greet", question=self.greeting, request=request)

    def says_no(self, text: str) -> bool:
        """Whether ``text`` holds a word that says no ("no", "don't", "nahi", "stop")."""
        return _says(_tokens(text), NO_WORDS)

    def is_greeting(self, text: str) -> bool:
        """Whether ``text`` opens with a greeting word ("hi", "good morning", "namaste")."""
        tokens = [token for token in _tokens(text) if token.isalnum()]
        return bool(tokens) and tokens[0] in GREETING_WORDS

    def resolve(
        self, pending: Clarification, answer: str, *, best_label: str | None = None
    ) -> ClarifiedRequest | Clarification | None:
        """``answer`` read as the answer to ``pending``: the request it completes, a reply when it says no, or None.

        None means the message is not an answer (a new request, say) and is
        routed on its own. ``best_label`` is the router's own reading of the
        answer, used when it names none of the offered actions in their words.
        """
        tokens = _tokens(answer)
        if pending.kind == "confirm" or (pending.kind == "choose" and len(pending.candidates) == 1):
            if _says(tokens, NO_WORDS) and not _says(tokens, YES_WORDS):
                return self.declined(request=pending.request)
            allowed = (
                YES_WORDS
                | YES_COMPANIONS
                | self._action_words(pending.candidates[0])
                | set(_tokens(pending.reference or ""))
            )
            if _says(tokens, YES_WORDS) and not _says(tokens, NO_WORDS) and all(token in allowed for token in tokens):
                how: Literal["confirmed", "chosen"] = "confirmed" if pending.kind == "confirm" else "chosen"
                return ClarifiedRequest(label=pending.candidates[0], text=pending.request, consent=how)
        if pending.kind == "choose":
            label = self._picked(pending, tokens, best_label)
            if label is not None:
                return ClarifiedRequest(
                    label=label, text=f"{pending.request.rstrip(' .?!')}. {answer}", consent="chosen"
                )
        if pending.kind == "reference" and (named := self.references(answer)):
            request = self.reference.compiled.sub(" ", pending.request) if self.reference else pending.request
            text = f"{' '.join(request.split()).rstrip(' .?!')} {named[0]}"
            return ClarifiedRequest(
                label=pending.candidates[0], text=text, consent="requested" if pending.consent else None
            )
        return None

    def _picked(self, pending: Clarification, tokens: Sequence[str], best_label: str | None) -> str | None:
        """The offered label an answer picks: by number, by the words of its action, or as the router reads it."""
        if len(tokens) <= 4:
            for token in tokens:
                if token in ORDINALS and ORDINALS[token] < len(pending.candidates):
                    return pending.candidates[ORDINALS[token]]
        named = [label for label in pending.candidates if _says(tokens, self._action_words(label))]
        if len(named) == 1:
            return named[0]
        return best_label if best_label in pending.candidates else None

    def _action_words(self, label: str) -> frozenset[str]:
        words = set(_tokens(self.action(label, " ")))
        return frozenset(words - FILLER_WORDS - (self.reference.words if self.reference else frozenset()))


def _says(tokens: Sequence[str], words: Mapping[str, object] | frozenset[str] | set[str]) -> bool:
    return any(token in words for token in tokens)
