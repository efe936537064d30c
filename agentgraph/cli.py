"""The ``agentgraph`` command line.

Each command group lives in :mod:`agentgraph.commands` and registers its
sub-parsers; handlers import heavy libraries only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agentgraph.errors import AgentGraphError

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
    try:
        return int(args.handler(args) or 0)
    except AgentGraphError as exc:
        print(f"agentgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
