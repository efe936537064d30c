"""``agentgraph traces``: give the LLM's traced calls their outcomes, by rule and by a person.

``agentgraph traces label --traces STORE [--no-RULE ...] [--json]`` runs the outcome rules
(:mod:`agentgraph.records.outcomes`) over the store's calls and prints how many each rule
accepted or rejected and how many are left.

``agentgraph traces review --traces STORE`` puts each call still pending to a person in the
terminal: accept, reject, skip or quit. For a review screen, ``--json`` prints the pending
calls as a JSON list (``id``, ``node``, ``step_type``, ``thread_id``, ``request``, ``output``,
``tool_calls``) and ``--apply FILE`` (``-`` for stdin) reads back a JSON list of ``{"id": ...,
"accepted": true | false}`` and prints what it marked. Either way each judgement is a decision
of node ``trace_review`` in the log, and the rules never overturn it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agentgraph.commands import login_name, open_traces
from agentgraph.errors import AgentGraphError

RULES = ("complaint", "approval", "answered_clarification", "validated")
"""As :class:`agentgraph.records.outcomes.OutcomeRules`' switches, named here so the parser imports nothing heavy."""

HINT = "give the graph's decisions.db (agentgraph run writes one) or its database URL"


def register(groups: argparse._SubParsersAction) -> None:
    traces = groups.add_parser("traces", help="outcomes of the LLM's traced calls: label by rule, review the rest")
    commands = traces.add_subparsers(dest="traces_command", required=True, metavar="COMMAND")
    label = commands.add_parser("label", help="label pending calls from what came of their turn")
    review = commands.add_parser("review", help="judge the calls no rule settled: interactively, or JSON in / out")
    for parser in (label, review):
        parser.add_argument("--traces", required=True, help="a trace store: a SQLite file or a postgresql:// URL")
    for rule in RULES:
        label.add_argument(f"--no-{rule.replace('_', '-')}", dest=rule, action="store_false",
                           help=f"do not apply the {rule.replace('_', ' ')} rule")  # fmt: skip
    label.add_argument("--complaint-pattern", help="the regular expression a complaining next request matches")
    label.add_argument("--json", action="store_true", help="print the report as JSON")
    label.set_defaults(handler=_label)
    review.add_argument("--json", action="store_true", help="print the pending calls as JSON and judge none")
    review.add_argument(
        "--apply", metavar="FILE", help='a JSON list of {"id": ..., "accepted": true|false}; - for stdin'
    )
    review.add_argument("--reviewer", help="who judges, recorded with each judgement (default: your login name)")
    review.set_defaults(handler=_review)


def _label(args: argparse.Namespace) -> int:
    from agentgraph.records.outcomes import OutcomeRules, label_outcomes

    switches = {rule: getattr(args, rule) for rule in RULES}
    pattern = {"complaint_pattern": args.complaint_pattern} if args.complaint_pattern else {}
    store = open_traces(args.traces, HINT)
    try:
        report = label_outcomes(store, OutcomeRules(**switches, **pattern))
    finally:
        store.close()
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    rules = ", ".join(f"{rule} {count}" for rule, count in sorted(report.by_rule.items())) or "none applied"
    print(f"turns       {report.turns} on {report.threads} threads")
    print(f"labelled    {report.accepted} accepted, {report.rejected} rejected ({rules})")
    print(f"pending     {report.pending} (agentgraph traces review --traces {args.traces})")
    return 0


def pending_call(call: Any) -> dict[str, Any]:
    """A pending call as the review screen gets it."""
    return {
        "id": call.id, "node": call.node, "step_type": call.step_type, "thread_id": call.thread_id,
        "request": call.input_text, "output": call.output, "tool_calls": call.tool_calls,
    }  # fmt: skip


def _review(args: argparse.Namespace) -> int:
    store = open_traces(args.traces, HINT)
    reviewer = args.reviewer or login_name()
    try:
        if args.apply is not None:
            verdicts = _read_verdicts(args.apply)
            marked = [_judge(store, item["id"], item["accepted"], reviewer) for item in verdicts]
            print(json.dumps({"marked": len(marked), "accepted": sum(marked), "rejected": len(marked) - sum(marked)}))
            return 0
        pending = [call for call in store.calls(pending=True)]
        if args.json:
            print(json.dumps([pending_call(call) for call in pending], indent=2, default=str))
            return 0
        return _review_interactively(store, pending, reviewer)
    finally:
        store.close()


def _read_verdicts(source: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    try:
        verdicts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentGraphError(f"--apply {source}: not JSON ({exc})") from exc
    if not isinstance(verdicts, list) or not all(
        isinstance(v, dict) and isinstance(v.get("id"), str) and isinstance(v.get("accepted"), bool) for v in verdicts
    ):
        raise AgentGraphError(f'--apply {source}: give a JSON list of {{"id": "...", "accepted": true or false}}')
    return verdicts


def _judge(store: Any, call_id: str, accepted: bool, reviewer: str) -> bool:
    from agentgraph.records.decisions import Decision
    from agentgraph.records.outcomes import REVIEW_NODE

    call = store.mark(call_id, accepted=accepted)  # TraceNotFoundError (exit 2) for an id the store lacks
    store.record(Decision(
        node=REVIEW_NODE, kind="outcome", input={"call_id": call.id, "node": call.node, "step_type": call.step_type},
        output=accepted, strategy="human", outcome="accepted" if accepted else "rejected", thread_id=call.thread_id,
        metadata={"reviewer": reviewer},
    ))  # fmt: skip
    return accepted


def _review_interactively(store: Any, pending: list[Any], reviewer: str) -> int:
    if not pending:
        print("nothing to review: every call has an outcome")
        return 0
    judged = 0
    for number, call in enumerate(pending, start=1):
        print(f"\n[{number}/{len(pending)}] {call.step_type or call.node} on thread {call.thread_id}")
        print(f"  request: {call.input_text}")
        print(f"  answer:  {call.output or json.dumps(call.tool_calls)}")
        while True:
            answer = input("  accept, reject, skip or quit? [a/r/s/q] ").strip().lower()[:1]
            if answer in ("a", "r", "s", "q"):
                break
        if answer == "q":
            break
        if answer != "s":
            _judge(store, call.id, answer == "a", reviewer)
            judged += 1
    print(f"judged      {judged} of {len(pending)}")
    return 0
