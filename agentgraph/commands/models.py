"""``agentgraph models``: which artifact serves each node role, and switching it.

``agentgraph models list [--registry DIR] [--json]`` prints each role with the artifact
serving it (and its canary); ``models show ROLE`` its whole history; ``models promote ROLE
MODEL [--force --reason TEXT]`` makes a gated artifact serve the role (one its gate did not
accept is refused, exit status 2, unless forced); ``models rollback ROLE`` restores what
served before the last switch. ``models canary ROLE MODEL --share 0.1`` lets a gated
candidate serve a share of the role's requests beside the current one; ``models judge ROLE``
compares the two on the decisions logged since (agreement, teacher agreement, escalations,
outcomes; :mod:`agentgraph.distill.canary`) and promotes the candidate or rolls it back by
rule (``--dry-run`` only reports; ``--rollback`` ends the canary by hand). The registry
defaults to the example graph's, ``~/.cache/agentgraph/customer-support/models``, which
``agentgraph run`` loads at start, and its decision log to the example's ``decisions.db``
(``--store`` names another: a SQLite file or a ``postgresql://`` URL).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agentgraph.commands import login_name

RULE_FLAGS = {"min_requests": int, "min_agreement": float, "max_teacher_drop": float, "min_teacher_checks": int,
              "max_escalated_rise": float, "max_rejected_rise": float, "min_judged_turns": int}  # fmt: skip


def register(groups: argparse._SubParsersAction) -> None:
    models = groups.add_parser("models", help="the model registry: which promoted artifact serves each node role")
    commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, handler: Any) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--registry", type=Path,
                            help="the registry folder (default: the example graph's, in its data dir: models/)")  # fmt: skip
        parser.add_argument("--store",
                            help="the decision log: switches are recorded there, canaries judged on it (default: the "
                            "example's decisions.db with the example's registry, none with --registry)")  # fmt: skip
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
    canary = command("canary", "let a gated candidate serve a share of a role's requests", _canary)
    canary.add_argument("role", help="the node role: router, extract, ...")
    canary.add_argument("model", type=Path, help="the candidate artifact's folder")
    canary.add_argument("--share", type=float, default=0.1, help="the part of the requests it serves (default 0.1)")
    canary.add_argument("--force", action="store_true", help="run it even though its gate did not accept it")
    canary.add_argument("--reason", help="why (recorded with the entry and in the decision log)")
    judge = command("judge", "weigh a role's canary against the current model; promote or roll it back", _judge)
    judge.add_argument("role")
    judge.add_argument("--node", help="the node whose decisions are judged (default: the role's name)")
    judge.add_argument("--dry-run", action="store_true", help="report the verdict; switch nothing")
    judge.add_argument("--rollback", action="store_true", help="end the canary now, rolled back, whatever the figures")
    # CanaryRule's fields, named here so the CLI starts without importing distillation; unset: the rule's default.
    for field, kind in RULE_FLAGS.items():
        judge.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"the canary rule's {field} (CanaryRule)")


def open_registry(folder: Path | None, store: str | None = None) -> Any:
    """The registry in ``folder``, or the example graph's; its switches logged to ``store`` (a trace store),
    or, for the example's registry, to the example's decision log as the graph's decisions are."""
    from agentgraph.distill.registry import ModelRegistry
    from agentgraph.records.traces import open_trace_store

    if folder is None:
        from agentgraph.graphs.customer_support import default_data_dir

        data_dir = default_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        folder, store = data_dir / "models", store or str(data_dir / "decisions.db")
    return ModelRegistry(folder, decision_log=open_trace_store(store) if store is not None else None)


def _canary_line(canary: Any) -> str:
    return f"{'':<10}  canary: {canary.entry.path} serves {canary.share:.0%} of the requests, since {canary.started_at}"


def _entry_line(role: str, entry: Any) -> str:
    if entry is None:
        return f"{role:<10}  default (nothing promoted)"
    gate = entry.lineage.get("gate") or {}
    figure = f"agreement {gate['agreement']:.3f}" if gate.get("agreement") is not None else "not gated"
    forced = "  FORCED" if entry.forced else ""
    return f"{role:<10}  {entry.path}  ({entry.trained_for or 'classifier'}, {figure}, promoted {entry.promoted_at}){forced}"


def _list(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry, args.store)
    roles = registry.read().roles
    if args.json:
        current = {role: registry.current(role) for role in sorted(roles)}
        print(json.dumps({role: None if e is None else e.model_dump() for role, e in current.items()}, indent=2))
        return 0
    if not roles:
        print(f"nothing promoted in {registry.folder}: every role is served by its default")
    for role in sorted(roles):
        print(_entry_line(role, registry.current(role)))
        if roles[role].canary is not None:
            print(_canary_line(roles[role].canary))
    return 0


def _show(args: argparse.Namespace) -> int:
    from agentgraph.distill.train import DistillError

    registry = open_registry(args.registry, args.store)
    history = registry.read().roles.get(args.role)
    if history is None:
        raise DistillError(f"nothing was ever promoted for {args.role!r} in {registry.folder}")
    if args.json:
        print(history.model_dump_json(indent=2))
        return 0
    print(_entry_line(args.role, registry.current(args.role)))
    if history.canary is not None:
        print(_canary_line(history.canary))
    for number, entry in enumerate(history.entries):
        marker = "*" if number == history.current else " "
        print(f"  {marker} {number}  {entry.path}  promoted {entry.promoted_at}: {entry.reason}")
        print(f"        lineage: {json.dumps(entry.lineage, sort_keys=True)}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    entry = open_registry(args.registry, args.store).promote(
        args.role, args.model, force=args.force, reason=args.reason
    )
    print(entry.model_dump_json(indent=2) if args.json else _entry_line(args.role, entry))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    restored = open_registry(args.registry, args.store).rollback(args.role)
    if args.json:
        print(json.dumps(None if restored is None else restored.model_dump(), indent=2))
    else:
        print(_entry_line(args.role, restored))
    return 0


def _canary(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry, args.store)
    canary = registry.start_canary(args.role, args.model, share=args.share, force=args.force, reason=args.reason)
    print(canary.model_dump_json(indent=2) if args.json else _canary_line(canary))
    return 0


def _judge(args: argparse.Namespace) -> int:
    from agentgraph.distill.canary import CanaryRule, judge_canary
    from agentgraph.distill.train import DistillError

    registry = open_registry(args.registry, args.store)
    if registry.decision_log is None:
        raise DistillError("judging a canary reads the decisions logged since it started: name their log with --store")
    if args.rollback:
        registry.end_canary(args.role, promote=False, reason=f"rolled back by hand by {login_name()}")
        print(f"{args.role}: the canary is rolled back; {_entry_line(args.role, registry.current(args.role)).strip()}")
        return 0
    rule = CanaryRule(**{field: getattr(args, field) for field in RULE_FLAGS if getattr(args, field) is not None})
    judgement = judge_canary(registry, registry.decision_log, args.role, node=args.node, rule=rule,
                             apply=not args.dry_run)  # fmt: skip
    if args.json:
        print(judgement.model_dump_json(indent=2))
        return 0
    done = {"continue": "keeps running", "promote": "is promoted", "rollback": "is rolled back"}[judgement.verdict]
    if args.dry_run and judgement.verdict != "continue":
        done = f"would be {'promoted' if judgement.verdict == 'promote' else 'rolled back'} (dry run)"
    print(f"{args.role}: the canary {judgement.candidate} {done}")
    for reason in judgement.reasons:
        print(f"  - {reason}")
    return 0
