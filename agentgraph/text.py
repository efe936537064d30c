"""Input hygiene shared by every node: control characters out, empty input refused, long input cut.

Example:
    >>> from agentgraph.text import clean_text, truncate_to_tokens
    >>> clean_text("where is\\x00 my order?\\x1b[31m")
    'where is my order?[31m'
    >>> truncate_to_tokens("one two three four", max_tokens=2, count_tokens=lambda s: len(s.split()))
    ('one two', True)
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable

from agentgraph.errors import EmptyInputError

logger = logging.getLogger(__name__)

_KEEP = {"\n", "\t"}


def clean_text(text: str) -> str:
    """NFC-normalised ``text`` without control or format characters (newlines and tabs stay)."""
    normalised = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in normalised if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))


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
