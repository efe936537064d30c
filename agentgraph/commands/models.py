"""``agentgraph models``: which artifact serves each node role, and switching it.

``agentgraph models list [--registry DIR] [--json]`` prints each role with the artifact
serving it; ``models show ROLE`` its whole history; ``models promote ROLE MODEL [--force
--reason TEXT]`` makes a gated artifact serve the role (one its gate did not accept is
refused, exit status 2, unless forced); ``models rollback ROLE`` restores what served
before the last switch. The registry defaults to the example graph's,
``~/.cache/agentgraph/customer-support/models``, which ``agentgraph run`` loads at start.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(groups: argparse._SubParsersAction) -> None:
    models = groups.add_parser("models", help="the model registry: which promoted artifact serves each node role")
    commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, handler: Any) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--registry", type=Path,
                            help="the registry folder (default: the example graph's, in its data dir: models/)")  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(handler=handler)
        return parser

    command("list", "each role and the artifact serving it", _list)
    command("show", "a role's artifacts, lineage and switches", _show).add_argument("role")
    promote = command("promote", "make an artifact its gate accepted serve a role", _promote)
    promote.add_argument("role", help="the node role: router, extract, ...")
    promote.add_argument("model", type=Path, help="the artifact's folder")
    promote.add_argument("--force", action="store_true", help="serve it even though its gate did not accept it")
    promote.add_argument("--reason", help="why (recorded with the entry and in the decision log)")
    command("rollback", "restore what served a role before its last switch", _rollback).add_argument("role")


def open_registry(folder: Path | None) -> Any:
    """The registry in ``folder``, or the example graph's (its switches logged to the example's decision log)."""
    from agentgraph.distill.registry import ModelRegistry
    from agentgraph.records.traces import open_trace_store

    if folder is not None:
        return ModelRegistry(folder)
    from agentgraph.graphs.customer_support import default_data_dir

    # The example's own registry: its switches go to the example's decision log, as the graph's do.
    data_dir = default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    return ModelRegistry(data_dir / "models", decision_log=open_trace_store(data_dir / "decisions.db"))


def _entry_line(role: str, entry: Any) -> str:
    if entry is None:
        return f"{role:<10}  default (nothing promoted)"
    gate = entry.lineage.get("gate") or {}
    figure = f"agreement {gate['agreement']:.3f}" if gate.get("agreement") is not None else "not gated"
    forced = "  FORCED" if entry.forced else ""
    return f"{role:<10}  {entry.path}  ({entry.trained_for or 'classifier'}, {figure}, promoted {entry.promoted_at}){forced}"


def _list(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    roles = registry.read().roles
    if args.json:
        current = {role: registry.current(role) for role in sorted(roles)}
        print(json.dumps({role: None if e is None else e.model_dump() for role, e in current.items()}, indent=2))
        return 0
    if not roles:
        print(f"nothing promoted in {registry.folder}: every role is served by its default")
    for role in sorted(roles):
        print(_entry_line(role, registry.current(role)))
    return 0


def _show(args: argparse.Namespace) -> int:
    from agentgraph.distill.train import DistillError

    registry = open_registry(args.registry)
    history = registry.read().roles.get(args.role)
    if history is None:
        raise DistillError(f"nothing was ever promoted for {args.role!r} in {registry.folder}")
    if args.json:
        print(history.model_dump_json(indent=2))
        return 0
    print(_entry_line(args.role, registry.current(args.role)))
    for number, entry in enumerate(history.entries):
        marker = "*" if number == history.current else " "
        print(f"  {marker} {number}  {entry.path}  promoted {entry.promoted_at}: {entry.reason}")
        print(f"        lineage: {json.dumps(entry.lineage, sort_keys=True)}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    entry = open_registry(args.registry).promote(args.role, args.model, force=args.force, reason=args.reason)
    print(entry.model_dump_json(indent=2) if args.json else _entry_line(args.role, entry))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    restored = open_registry(args.registry).rollback(args.role)
    if args.json:
        print(json.dumps(None if restored is None else restored.model_dump(), indent=2))
    else:
        print(_entry_line(args.role, restored))
    return 0
