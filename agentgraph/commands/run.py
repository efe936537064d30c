"""``agentgraph run``: run an example graph from the terminal.

``agentgraph run customer-support "MESSAGE"`` sends one request through the
example customer-support graph and prints the reply with the route, its
confidence, the nodes visited, the LLM calls and their tokens, and the latency;
``--json`` prints the same as one JSON object. With a price table in
``AGENTGRAPH_PRICES`` (:class:`agentgraph.records.costs.PriceTable`) each turn
also gives what its LLM calls cost (``llm_cost_usd``). ``--interactive`` is a chat loop on one thread.

A pending approval (a refund, an account deletion) is shown and answered in
the terminal: approve, edit (new arguments as JSON) or reject. With
``--json``, or when input ends before an answer, the turn ends with the approval
pending; answer it later with ``--thread ID --resume '{"decisions": [...]}'``.
Threads, approvals, the store and the decision log live in ``--data-dir``
(default ``~/.cache/agentgraph/customer-support``), so ``--thread ID`` resumes
a thread in a new process.

Turns on one thread run one at a time, across processes too: a turn waits
(``--wait``, default 120 s) for one already running on its thread.

``--database-url postgresql://...`` (or ``AGENTGRAPH_DATABASE_URL``) keeps the
threads and approvals, the idempotency keys and the trace store and decision
log in that PostgreSQL database instead, so commands on several machines serve
the same threads: an approval raised on one is answered on another. Turns then
hold their thread with an advisory lock in the database; checkpoints are
encrypted with ``AGENTGRAPH_CHECKPOINT_KEY``, which every machine must set alike.
The shop stays in ``--data-dir``.

``--slm-url`` uses a vLLM server instead of the embedded model; the LLM for
escalations comes from ``AGENTGRAPH_LLM_*`` (none: a human-handoff ticket);
``--mode NODE=MODE`` (repeatable, over ``AGENTGRAPH_MODES``) runs ``router`` or
``extract`` as ``teacher``, ``auto`` or ``student`` (see :mod:`agentgraph.modes`);
``--shadow-rate`` sends that share of small-model answers to the LLM too;
``--trace`` (or LANGFUSE_PUBLIC_KEY/SECRET_KEY in the environment) sends a
Langfuse trace per turn.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, cast

from agentgraph.commands import login_name
from agentgraph.errors import AgentGraphError, ApprovalResponseError, InvalidTextError
from agentgraph.postgres import DATABASE_URL_ENV
from agentgraph.text import require_utf8

EXAMPLES = ("customer-support",)


def register(groups: argparse._SubParsersAction) -> None:
    run = groups.add_parser("run", help="run an example graph on a request")
    run.add_argument("graph", choices=EXAMPLES, help="the example graph")
    run.add_argument("message", nargs="?", help="the customer's request (omit with --interactive or --resume)")
    run.add_argument("--interactive", action="store_true", help="a chat loop on one thread")
    run.add_argument("--thread", help="thread id: continue or resume this thread (default: a new one)")
    run.add_argument("--customer", help="the customer id the request comes from (default: the demo customer C1001)")
    run.add_argument(
        "--resume", help='answer a pending approval: JSON such as \'{"decisions": [{"type": "approve"}]}\''
    )
    run.add_argument("--slm-url", help="a vLLM server's base URL instead of the embedded SLM (env AGENTGRAPH_SLM_URL)")
    run.add_argument("--slm-model", help="embedded: a model folder; vLLM: the served model name")
    run.add_argument(
        "--data-dir", type=Path, help="store, logs and threads (default: ~/.cache/agentgraph/customer-support)"
    )
    run.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL database (postgresql://...) for threads, approvals, idempotency keys and the "
        f"trace store, shared by several workers (env {DATABASE_URL_ENV}; needs AGENTGRAPH_CHECKPOINT_KEY)",
    )
    run.add_argument("--json", action="store_true", help="print each turn as one JSON object")
    run.add_argument(
        "--reviewer",
        metavar="NAME",
        help="who answers approvals asked in the terminal, recorded as the approver (default: your login name)",
    )
    run.add_argument("--wait", type=float, metavar="SECONDS",
                     help="how long a turn waits for another turn on its thread (in any process on --data-dir, "
                     "or any worker on --database-url) to finish (default 120)")  # fmt: skip
    run.add_argument("--trace", action="store_true", help="trace to Langfuse (needs LANGFUSE_* credentials)")
    run.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="NODE=MODE",
        help="run router or extract as teacher, auto or student (repeatable; env AGENTGRAPH_MODES)",
    )
    run.add_argument(
        "--shadow-rate",
        type=float,
        metavar="RATE",
        help="share of small-model answers the LLM checks too (env AGENTGRAPH_SHADOW_RATE; default 0)",
    )
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    resume = _checked_arguments(args)
    session = _Session(args)
    try:
        if args.interactive:
            session.chat()
        else:
            session.turn(args.message, resume=resume)
    finally:
        session.close()
    return 0


def _checked_arguments(args: argparse.Namespace) -> dict[str, Any] | None:
    """The parsed ``--resume`` value, once every argument is known to be usable: nothing has loaded yet."""
    if args.interactive == bool(args.message or args.resume):
        raise AgentGraphError("give a MESSAGE, --resume with --thread, or --interactive")
    if args.message and args.resume:
        raise AgentGraphError(
            "give a MESSAGE or --resume, not both: --resume answers a pending approval and sends no message"
        )
    if args.resume and not args.thread:
        raise AgentGraphError("--resume answers the approval pending on a thread: give its --thread ID")
    if args.wait is not None and args.wait < 0:
        raise AgentGraphError(
            f"--wait is how many seconds to wait for a busy thread: give 0 or more, not {args.wait:g}"
        )
    for what, text in (("MESSAGE", args.message), ("--thread", args.thread), ("--customer", args.customer),
                       ("--resume", args.resume)):  # fmt: skip
        if text is not None:
            require_utf8(text, what=what)
    args.database_url = args.database_url or os.environ.get(DATABASE_URL_ENV) or None
    if args.database_url is not None:
        _check_database_url(args.database_url)
    return _parse_resume(args.resume) if args.resume else None


def _check_database_url(url: str) -> None:
    """A usable PostgreSQL URL and the checkpoint key every worker on it shares, before any model loads."""
    from agentgraph.checkpointing import checkpoint_key
    from agentgraph.postgres import describe_url, is_postgres_url

    if not is_postgres_url(url):
        raise AgentGraphError(f"--database-url must be a postgresql:// URL, not {describe_url(url)!r}")
    checkpoint_key(None)  # set, and 32 bytes: or a ConfigError that says how to make one


def _parse_resume(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentGraphError(
            f'--resume must be JSON like \'{{"decisions": [{{"type": "approve"}}]}}\': {exc}'
        ) from exc
    if not isinstance(value, dict) or "decisions" not in value:
        raise AgentGraphError('--resume must be a JSON object with "decisions": one per pending action')
    return value


class _Session:
    """One graph, one thread, one output format, for the life of the command."""

    def __init__(self, args: argparse.Namespace) -> None:
        from agentgraph.graphs.customer_support import DEFAULT_MODES, CustomerSupportParts, compose
        from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER
        from agentgraph.modes import NodeModes
        from agentgraph.records.costs import PRICES_ENV, PriceTable
        from agentgraph.shadow import ShadowConfig
        from agentgraph.slm import SLMSettings, load_slm
        from agentgraph.tiers import LLMTiers
        from agentgraph.tracing import DecisionTracingHandler, tracing_configured

        if args.trace and not tracing_configured():
            raise AgentGraphError("--trace needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (and LANGFUSE_BASE_URL)")
        self.args = args
        self.thread_id = args.thread or uuid.uuid4().hex
        self.customer_id = args.customer or DEMO_CUSTOMER
        # Settings first: a bad mode or rate is reported before any model loads.
        modes = NodeModes.from_env().overridden_by(NodeModes.parse(args.mode)).check_nodes(DEFAULT_MODES)
        shadow = ShadowConfig.checked(rate=args.shadow_rate) if args.shadow_rate is not None else None
        self.prices = PriceTable.load() if os.environ.get(PRICES_ENV) else None
        slm = load_slm(SLMSettings.from_env(url=args.slm_url, model=args.slm_model))
        self.parts = CustomerSupportParts(
            data_dir=args.data_dir, slm=slm, tiers=LLMTiers.from_env(), modes=modes, shadow=shadow,
            database_url=args.database_url,
        )  # fmt: skip
        self.llm_call_recorder = self.parts.llm_call_recorder  # every LLM call into the trace store, for distillation
        self._checkpointer = self.parts.durable_checkpointer()  # checkpoints.db, or the PostgreSQL database
        self.graph = compose(self.parts, checkpointer=self._checkpointer)
        self.tracer = DecisionTracingHandler() if args.trace or tracing_configured() else None
        # Approvals are asked on stdin (a terminal, or answers piped in); --json output never prompts.
        self.ask = not args.json
        self.reviewer = args.reviewer or login_name()

    def turn(self, message: str | None, *, resume: dict[str, Any] | None = None) -> None:
        from agentgraph.running import DEFAULT_TURN_WAIT_S, run_turn
        from agentgraph.tracing import trace_metadata

        pending: dict[str, Any] | None = None
        while True:
            try:
                result = run_turn(
                    self.graph, message, resume=resume, thread_id=self.thread_id, inputs={"customer_id": self.customer_id},
                    callbacks=[self.llm_call_recorder, *([self.tracer] if self.tracer else [])],
                    metadata=trace_metadata(session_id=self.thread_id, user_id=self.customer_id),
                    **self.parts.turn_lock,  # other processes on this data dir, or database, wait their turn
                    wait_s=DEFAULT_TURN_WAIT_S if self.args.wait is None else self.args.wait,
                )  # fmt: skip
            except ApprovalResponseError as exc:
                if pending is None:  # a --resume given on the command line: the caller hears why
                    raise
                print(f"agentgraph: {exc}", file=sys.stderr)  # asked in the terminal: ask again
            else:
                self._print(result)
                if result.interrupt is None or not self.ask:
                    return
                pending = result.interrupt
            resume = _ask_for_decisions(pending, reviewer=self.reviewer)
            if resume is None:
                return
            message = None

    def chat(self) -> None:
        print(f"thread {self.thread_id}: type a request, or an empty line to quit", file=sys.stderr)
        # Bytes that are not UTF-8 arrive as lone surrogates, refused line by line rather than ending the chat.
        # The interpreter's stdin is a TextIOWrapper (typed TextIO, which has no reconfigure).
        cast(io.TextIOWrapper, sys.stdin).reconfigure(errors="surrogateescape")
        while True:
            try:
                message = input("you> ").strip()
            except EOFError:
                return
            if not message:
                return
            try:
                require_utf8(message, what="message")
            except InvalidTextError as exc:
                print(f"agentgraph: error: {exc}", file=sys.stderr)
                continue
            self.turn(message)

    def _print(self, result: Any) -> None:
        cost = None
        if self.prices is not None:
            cost = sum(self.prices.price_of(model).of(t.prompt, t.completion) for model, t in result.llm_tokens.items())
        if self.args.json:
            print(json.dumps(result.model_dump(mode="json") | ({"llm_cost_usd": cost} if cost is not None else {}),
                             separators=(",", ":"), ensure_ascii=False))  # fmt: skip
            return
        confidence = "n/a" if result.confidence is None else f"{result.confidence:.3f}"
        print(f"route       {result.route} (intent {result.intent}, confidence {confidence})")
        print(f"nodes       {' > '.join(result.nodes)}")
        tokens = sum(t.prompt + t.completion for t in result.llm_tokens.values())
        print(f"calls       {result.llm_calls} LLM ({tokens} tokens{'' if cost is None else f', ${cost:.6f}'}), "
              f"{result.slm_calls} small-model decisions")  # fmt: skip
        print(f"latency     {result.latency_ms:.0f} ms")
        print(f"thread      {result.thread_id}")
        if result.interrupt is not None:
            print("approval    pending:")
            for action in result.interrupt["action_requests"]:
                print(f"  {action['name']}({json.dumps(action['arguments'])})")
            if not self.ask:
                shared = " (and the same --database-url)" if self.args.database_url else ""
                print(f"  answer with: agentgraph run {self.args.graph} --thread {result.thread_id} "
                      "--resume '{\"decisions\": [{\"type\": \"approve\"}]}'" + shared)  # fmt: skip
        else:
            print(f"\n{result.response}")

    def close(self) -> None:
        self.parts.close()
        self._checkpointer.conn.close()
        if self.tracer is not None:
            from langfuse import get_client

            get_client().flush()


def _ask_for_decisions(interrupt: dict[str, Any], *, reviewer: str) -> dict[str, Any] | None:
    """A person's decision on each pending action, asked in the terminal and signed by ``reviewer``; None when input ends."""
    decisions: list[dict[str, Any]] = []
    for action in interrupt["action_requests"]:
        print(f"\n{action['description']}", file=sys.stderr)
        while True:
            try:
                answer = input(f"{action['name']}: [a]pprove, [e]dit, [r]eject? ").strip().lower()
            except EOFError:
                return None
            if answer in ("a", "approve"):
                decisions.append({"type": "approve", "reviewer": reviewer})
            elif answer in ("r", "reject"):
                reason = input("reason (optional): ").strip() or None
                decisions.append({"type": "reject", "message": reason, "reviewer": reviewer})
            elif answer in ("e", "edit"):
                try:
                    arguments = json.loads(input(f"new arguments as JSON [{json.dumps(action['arguments'])}]: "))
                except json.JSONDecodeError as exc:
                    print(f"not JSON: {exc}", file=sys.stderr)
                    continue
                decisions.append({"type": "edit", "edited_action": {"name": action["name"], "arguments": arguments},
                                  "reviewer": reviewer})  # fmt: skip
            else:
                continue
            break
    return {"decisions": decisions}
