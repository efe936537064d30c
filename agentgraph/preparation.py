"""First-time preparation, announced and quiet: one line for each step that runs once, and nothing else.

A first run converts the SLM, exports the sentence encoder and trains the
classifiers and the reranker it needs, and then caches them. Without a word,
those minutes look like a hang; with the libraries' own output (progress bars,
an exporter's report, deprecation warnings of code the user does not own) they
look broken. :func:`preparing` runs a step with one line when it starts, logged
to the :data:`LOGGER` logger at INFO (:func:`announce`), and the libraries'
progress bars, warnings and log records below ERROR held back. ``agentgraph``
shows these lines on stderr whatever its verbosity; in a library, configure
logging to see them.

Example:
    >>> import logging, sys
    >>> from agentgraph.preparation import LOGGER, announce
    >>> handler = logging.StreamHandler(sys.stdout)
    >>> logging.getLogger(LOGGER).addHandler(handler); logging.getLogger(LOGGER).setLevel(logging.INFO)
    >>> announce("training the router", seconds=120)
    first use: training the router (about 2 min on two cores, once)
    >>> logging.getLogger(LOGGER).removeHandler(handler)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = "agentgraph.preparation"
LIBRARY_LOGGERS = ("torch", "transformers", "sentence_transformers", "onnxruntime", "onnxscript")
"""The loggers a preparation step holds below ERROR: the libraries' notes on their own internals."""


def announce(step: str, *, seconds: float | None = None) -> None:
    """Log that ``step`` starts, with what it takes on two CPU cores (``seconds``, as measured there) when known."""
    if seconds is None:
        logging.getLogger(LOGGER).info("first use: %s (once)", step)
        return
    took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    logging.getLogger(LOGGER).info("first use: %s (about %s on two cores, once)", step, took)


@contextmanager
def preparing(step: str, *, seconds: float | None = None) -> Iterator[None]:
    """Run ``step`` announced (:func:`announce`) and quiet: no progress bar, warning or library record below ERROR."""
    announce(step, seconds=seconds)
    with loading_quietly(), warnings.catch_warnings(), _libraries_at_error():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def loading_quietly() -> Iterator[None]:
    """Within this block transformers draws no progress bar: reading a local model folder takes a second, and a
    bar per model on every start is noise in a user's terminal and a test log. The setting is restored after."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


@contextmanager
def _libraries_at_error() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    # onnxruntime's quantiser writes its advice to the root logger (logging.warning), not to a logger of its own.
    from_libraries = _FromLibraries()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    root.addFilter(from_libraries)
    try:
        yield
    finally:
        root.removeFilter(from_libraries)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _FromLibraries(logging.Filter):
    """Drops the root logger's records below ERROR that a library of :data:`LIBRARY_LOGGERS` wrote there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(f"/{name}/" in record.pathname for name in LIBRARY_LOGGERS)
