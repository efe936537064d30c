"""Input hygiene shared by every node: control characters out, empty input refused, long input cut.

Text from outside (a command line, a request body) is checked first with
:func:`require_utf8`: a lone surrogate is what Python makes of bytes that were
not UTF-8, and no store, model or JSON encoder takes it.

Example:
    >>> from agentgraph.text import clean_text, require_utf8, truncate_to_tokens
    >>> clean_text("where is\\x00 my order?\\x1b[31m")
    'where is my order?[31m'
    >>> require_utf8("\\udcff\\udcfe", what="message")
    Traceback (most recent call last):
    ...
    agentgraph.errors.InvalidTextError: the message is not valid text: character 0 is a lone surrogate (U+DCFF, ...
    >>> truncate_to_tokens("one two three four", max_tokens=2, count_tokens=lambda s: len(s.split()))
    ('one two', True)
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable

from agentgraph.errors import EmptyInputError, InvalidTextError

logger = logging.getLogger(__name__)

_KEEP = {"\n", "\t"}


def clean_text(text: str) -> str:
    """NFC-normalised ``text`` without control or format characters (newlines and tabs stay)."""
    normalised = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in normalised if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))


def require_utf8(text: object, *, what: str = "input") -> str:
    """``text`` as it is when it is a str that encodes as UTF-8; :class:`InvalidTextError` saying why not otherwise."""
    if not isinstance(text, str):
        raise InvalidTextError(
            f"the {what} must be text (a str), not {type(text).__name__}: pass {text!r:.40} as a string"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTextError(
            f"the {what} is not valid text: character {exc.start} is a lone surrogate "
            f"({_describe_surrogate(text[exc.start])}); send the text as UTF-8"
        ) from None
    return text


def _describe_surrogate(char: str) -> str:
    # Python decodes a byte that is not UTF-8 (in sys.argv, file names, or with errors="surrogateescape")
    # as U+DC80-U+DCFF; naming the byte tells the sender what went wrong.
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"U+{code:04X}, what Python makes of the byte 0x{code - 0xDC00:02X}, which is not UTF-8"
    return f"U+{code:04X}, half of a UTF-16 pair without its other half"


def require_text(text: str | None, *, what: str = "input") -> str:
    """``text`` cleaned; :class:`EmptyInputError` when nothing but whitespace is left."""
    cleaned = clean_text(text or "")
    if not cleaned.strip():
        raise EmptyInputError(f"the {what} is empty: give the node some text to work on")
    return cleaned


def truncate_to_tokens(text: str, *, max_tokens: int, count_tokens: Callable[[str], int]) -> tuple[str, bool]:
    """The longest prefix of ``text`` (cut at a word boundary) within ``max_tokens``; logs a warning when cut.

    Returns ``(text, was_truncated)``. Binary search over characters keeps the
    number of ``count_tokens`` calls logarithmic even for 100 KB inputs.
    """
    if count_tokens(text) <= max_tokens:
        return text, False
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    cut = text[:low]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    logger.warning("input of %d characters cut to %d to fit %d tokens", len(text), len(cut), max_tokens)
    return cut, True
