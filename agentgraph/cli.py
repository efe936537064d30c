"""The ``agentgraph`` command line.

Each command group lives in :mod:`agentgraph.commands` and registers its
sub-parsers; handlers import heavy libraries only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from agentgraph.errors import AgentGraphError
from agentgraph.preparation import LOGGER as PREPARATION_LOGGER

COMMAND_MODULES = (
    "agentgraph.commands.run",
    "agentgraph.commands.slm",
    "agentgraph.commands.eval",
    "agentgraph.commands.distill",
    "agentgraph.commands.report",
    "agentgraph.commands.models",
    "agentgraph.commands.traces",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentgraph", description="LangGraph agents with an SLM control layer")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise
    with preparation_lines():
        try:
            return int(args.handler(args) or 0)
        except AgentGraphError as exc:
            print(f"agentgraph: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130


@contextmanager
def preparation_lines() -> Iterator[None]:
    """First-time preparation steps (:mod:`agentgraph.preparation`) shown on stderr, ``-v`` or not."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("agentgraph: %(message)s"))
    preparation = logging.getLogger(PREPARATION_LOGGER)
    level, propagate = preparation.level, preparation.propagate
    preparation.addHandler(handler)
    preparation.setLevel(logging.INFO)
    preparation.propagate = False  # shown once, not again by the root logger under -v
    try:
        yield
    finally:
        preparation.removeHandler(handler)
        preparation.setLevel(level)
        preparation.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
