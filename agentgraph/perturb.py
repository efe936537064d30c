"""Realistic noise for requests: the ways people type into a support chat, reproducible from a seed.

Clean training data ("I would like to cancel my order 123, can you help me?")
teaches a router little about what customers actually send: "cancle ordr",
"order no 55102", "refund kab milega", "CASH ON DELIVERY IS THERE OR NOT??".
Each function here turns a text into one such variant, drawing its choices
from the ``random.Random`` it is given, so a seed fixes the result:

- :func:`add_typos`: keyboard-distance typos (a neighbouring key, a dropped,
  doubled or swapped letter) in some words;
- :func:`drop_words`: words left out;
- :func:`truncate`: a fragment of 1-4 words, what is left once the request's
  filler (``I would like to``, ``can you help me``) is gone;
- :func:`lowercase`: lower case, end punctuation dropped;
- :func:`shout`: all capitals, punctuation doubled;
- :func:`abbreviate`: chat abbreviations (``u``, ``ur``, ``pls``, ``plz``);
- :func:`code_mix`: English words replaced by romanised Hindi, the code-mixing
  of much Indian e-commerce traffic (``mera order kab aayega``);
- :func:`decorate`: a greeting before, thanks or an emoji after;
- :func:`id_only`: the identifiers of the request alone (``order no 55102``).

:func:`realistic` combines them at random, the way real messages combine
them. The tables (:data:`KEYBOARD_NEIGHBOURS`, :data:`CHAT_ABBREVIATIONS`,
:data:`HINGLISH`, :data:`FILLER_WORDS`) are plain dicts and sets: pass your own
for another language or keyboard.

Example:
    >>> import random
    >>> from agentgraph.perturb import abbreviate, add_typos, id_only, truncate
    >>> truncate("I would like to cancel my order 4413, can you help me?", random.Random(0))
    'cancel order 4413'
    >>> abbreviate("can you please tell me your hours", random.Random(0))
    'can u pl tell me yr hours'
    >>> id_only("I want to cancel my order 4413 now", random.Random(1))
    'order 4413'
    >>> add_typos("where is my parcel", random.Random(2), rate=1.0) != "where is my parcel"
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence

Perturbation = Callable[[str, random.Random], str]
"""A function from a text and a seeded random source to a perturbed text."""

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row, and the rows above and below)."""
    position = {ch: (r, c) for r, row in enumerate(_ROWS) for c, ch in enumerate(row)}
    return {
        ch: "".join(
            other for other, (r2, c2) in position.items() if other != ch and abs(r - r2) <= 1 and abs(c - c2) <= 1
        )
        for ch, (r, c) in position.items()
    }


KEYBOARD_NEIGHBOURS: dict[str, str] = _neighbours()
"""``{letter: the letters around it}`` on a QWERTY keyboard."""

CHAT_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    "you": ("u",),
    "your": ("ur", "yr"),
    "you're": ("ur",),
    "are": ("r",),
    "please": ("pls", "plz", "pl"),
    "thanks": ("thx", "thanx", "tnx"),
    "thank you": ("ty", "thank u", "thnx"),
    "okay": ("ok", "k"),
    "because": ("bcoz", "coz", "bc"),
    "what": ("wat", "wht"),
    "why": ("y",),
    "with": ("wid", "w/"),
    "number": ("no", "no.", "num"),
    "message": ("msg",),
    "information": ("info",),
    "account": ("acc", "a/c", "acct"),
    "received": ("recvd", "rcvd"),
    "tomorrow": ("tmrw", "2moro"),
    "today": ("2day",),
    "before": ("b4",),
    "for": ("4",),
    "to": ("2",),
    "i am": ("im", "i m"),
    "don't": ("dont", "dnt"),
    "can't": ("cant",),
    "didn't": ("didnt",),
    "want to": ("wanna",),
    "going to": ("gonna",),
    "know": ("kno",),
    "customer": ("cust",),
    "as soon as possible": ("asap",),
    "cash on delivery": ("COD", "cod"),
}
"""``{phrase: its chat forms}``, matched case-insensitively on word boundaries."""

HINGLISH: dict[str, tuple[str, ...]] = {
    "my": ("mera", "meri", "mere"),
    "me": ("mujhe",),
    "i want": ("mujhe chahiye", "mujhe"),
    "i need": ("mujhe chahiye",),
    "when": ("kab",),
    "where": ("kahan", "kaha"),
    "what": ("kya",),
    "why": ("kyu", "kyun"),
    "how": ("kaise",),
    "is": ("hai",),
    "not": ("nahi", "nai"),
    "no": ("nahi",),
    "yes": ("haan",),
    "and": ("aur",),
    "but": ("par", "lekin"),
    "money": ("paisa", "paise"),
    "back": ("wapas",),
    "now": ("abhi",),
    "today": ("aaj",),
    "tomorrow": ("kal",),
    "yesterday": ("kal",),
    "please": ("plz", "kripya"),
    "quickly": ("jaldi",),
    "still": ("abhi tak",),
    "will": ("hoga", "karega"),
    "tell": ("batao", "bataye"),
    "help": ("madad", "help karo"),
    "brother": ("bhai",),
    "which": ("kaunsa",),
    "there": ("wahan",),
    "here": ("yahan",),
}
"""English phrases and the romanised Hindi customers mix in for them."""

HINGLISH_ENDINGS = ("kar do", "karna hai", "chahiye", "hai kya", "batao", "jaldi", "bhai", "plz", "sir")
"""Particles code-mixed messages often end in."""

FILLER_WORDS = frozenset(
    """a an the i i'm im me my mine we our us you your u ur it its this that these those is am are was were be been
    to of for on in at by with from about into and or but so if then than as just also very really kindly please
    pls plz would could should can can't cannot will shall may might must do does did don't have has had want wanna
    need like love wish help assist tell show know let give get some any there here how what when where which who
    why hello hi hey dear sir madam thanks thank okay ok yes no not""".split()
)
"""Words a fragment leaves out: function words and request filler (``would like to``, ``can you help me``)."""

GREETINGS = ("hi", "hello", "hii", "hello sir", "hey", "good morning", "dear team", "hi team")
SIGN_OFFS = ("thanks", "thank you", "thx", "pls", "asap", "???", "!!", "🙏", "😡", "😊", "🙂")

_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_NUMBER = re.compile(r"#?\d[\d\-]*\d|\d")
_END_PUNCTUATION = re.compile(r"[\s.!?]+$")


def keyboard_typo(word: str, rng: random.Random) -> str:
    """``word`` with one typo: a neighbouring key, or a letter dropped, doubled or swapped with the next."""
    letters = [i for i, ch in enumerate(word) if ch.lower() in KEYBOARD_NEIGHBOURS]
    if not letters:
        return word
    i = rng.choice(letters)
    kind = rng.choice(("neighbour", "neighbour", "drop", "double", "swap"))
    if kind == "neighbour":
        replacement = rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()])
        return word[:i] + (replacement.upper() if word[i].isupper() else replacement) + word[i + 1 :]
    if kind == "drop" and len(word) > 2:
        return word[:i] + word[i + 1 :]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i] + word[i:]


def add_typos(text: str, rng: random.Random, *, rate: float = 0.3) -> str:
    """A keyboard typo in each word of three letters or more, with probability ``rate`` (digits untouched)."""
    return _WORD.sub(lambda m: keyboard_typo(m[0], rng) if len(m[0]) >= 3 and rng.random() < rate else m[0], text)


def drop_words(text: str, rng: random.Random, *, rate: float = 0.25) -> str:
    """``text`` with each word left out with probability ``rate``; numbers stay, and one word at least."""
    words = text.split()
    kept = [w for w in words if _NUMBER.fullmatch(w.strip(".,!?")) or rng.random() >= rate]
    return " ".join(kept or [rng.choice(words)]) if words else text


def truncate(
    text: str, rng: random.Random, *, min_words: int = 1, max_words: int = 4, filler: frozenset[str] = FILLER_WORDS
) -> str:
    """A fragment: the first 1-4 (``min_words``-``max_words``) words of ``text`` once its filler words are gone.

    Numbers count as words, so "cancel order 4413" can keep its id. A text of
    filler alone comes back as its first words.
    """
    words = [w.strip('.,!?;:()"') for w in text.split()]
    content = [w for w in words if w and w.lower() not in filler]
    chosen = content or [w for w in words if w]
    return " ".join(chosen[: rng.randint(min_words, max_words)])


def lowercase(text: str, rng: random.Random | None = None) -> str:
    """Lower case, without the end punctuation."""
    return _END_PUNCTUATION.sub("", text.lower()) or text.lower()


def shout(text: str, rng: random.Random) -> str:
    """ALL CAPITALS, the end punctuation doubled or tripled."""
    return _END_PUNCTUATION.sub("", text.upper()) + rng.choice(("!!", "??", "!!!", "???", "!?", ""))


def _substitute(text: str, table: Mapping[str, Sequence[str]], rng: random.Random, rate: float) -> str:
    """Each phrase of ``table`` found in ``text`` (longest first) replaced by one of its forms, with probability ``rate``."""
    phrases = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w'])(" + "|".join(re.escape(p) for p in phrases) + r")(?![\w'])", re.IGNORECASE)
    return pattern.sub(lambda m: rng.choice(table[m[0].lower()]) if rng.random() < rate else m[0], text)


def abbreviate(
    text: str, rng: random.Random, *, rate: float = 1.0, table: Mapping[str, Sequence[str]] = CHAT_ABBREVIATIONS
) -> str:
    """Chat abbreviations for the phrases of ``table``, each with probability ``rate``."""
    return _substitute(text, table, rng, rate)


def code_mix(
    text: str,
    rng: random.Random,
    *,
    rate: float = 0.7,
    table: Mapping[str, Sequence[str]] = HINGLISH,
    endings: Sequence[str] = HINGLISH_ENDINGS,
) -> str:
    """Words of ``table``'s language for the English phrases it lists (each with probability ``rate``), often an ending."""
    mixed = _substitute(text, table, rng, rate)
    return f"{lowercase(mixed)} {rng.choice(endings)}" if endings and rng.random() < 0.5 else mixed


def decorate(text: str, rng: random.Random) -> str:
    """A greeting before the text, or thanks or an emoji after it, or both."""
    before = f"{rng.choice(GREETINGS)} " if rng.random() < 0.5 else ""
    after = f" {rng.choice(SIGN_OFFS)}" if not before or rng.random() < 0.5 else ""
    return f"{before}{text}{after}"


def id_only(text: str, rng: random.Random) -> str:
    """The request's first identifier alone, bare or named (``55102``, ``order no 55102``); a made-up one if it has none."""
    found = _NUMBER.findall(text)
    identifier = found[0] if found else str(rng.randint(10_000, 99_999_999))
    return rng.choice(("{}", "order {}", "order no {}", "order id {}", "#{}", "{} ?", "my order {}")).format(identifier)


PERTURBATIONS: dict[str, Perturbation] = {
    "typos": add_typos,
    "dropped_words": drop_words,
    "truncated": truncate,
    "lowercase": lowercase,
    "shouted": shout,
    "abbreviations": abbreviate,
    "code_mixed": code_mix,
    "decorated": decorate,
}
"""The perturbations that keep a request's intent, by name (:func:`id_only` drops it, so it is not here)."""

_REALISTIC_MIX: tuple[tuple[str, float], ...] = (
    ("truncated", 0.3),
    ("dropped_words", 0.2),
    ("code_mixed", 0.15),
    ("abbreviations", 0.45),
    ("typos", 0.4),
    ("lowercase", 0.6),
    ("shouted", 0.05),
    ("decorated", 0.2),
)
"""How often each perturbation joins a realistic variant, in the order they apply (words first, case last)."""


def realistic(text: str, rng: random.Random, *, primary: str | None = None) -> str:
    """A variant of ``text`` as a customer might type it: a random mix of the perturbations.

    ``primary`` (a name in :data:`PERTURBATIONS`) is always applied; the rest
    join at their usual rates. The variant differs from ``text`` whenever any
    perturbation could change it.
    """
    if primary is not None and primary not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {primary!r}; choose from {', '.join(PERTURBATIONS)}")
    for _ in range(8):
        variant = text
        for name, rate in _REALISTIC_MIX:
            if name == primary or rng.random() < rate:
                variant = PERTURBATIONS[name](variant, rng)
        if variant != text:
            return variant
    return lowercase(text) if lowercase(text) != text else add_typos(text, rng, rate=1.0)
