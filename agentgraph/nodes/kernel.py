"""The kernel under every control node: read the input, decide, record the decision, route.

A node implements only its decision, ``decide(call) -> NodeResult``; :class:`ControlNode`
does the rest, the same way for every node:

- reads ``state[input_key]``: a string, a LangChain message, or a list of messages (the last one's
  text); a node that reads a value (the output validator) gets it as it is;
- one rule for bad input: a missing or blank input raises
  :class:`~agentgraph.errors.EmptyInputError`, one over ``max_input_chars`` raises
  :class:`~agentgraph.errors.InputTooLargeError`; either after a ``rejected`` record is logged,
  so a refused request is in the log too;
- the mode (:mod:`agentgraph.modes`): ``config["configurable"]["agentgraph_modes"]`` for one
  invocation, else the factory's ``mode=``, else ``AGENTGRAPH_MODES``, else the node's default;
- times the call, builds the :class:`~agentgraph.records.decisions.Decision` (node, kind, thread id,
  latency, mode), logs it, and samples a shadow comparison with the teacher
  (:class:`~agentgraph.shadow.ShadowEvaluator`);
- returns the update with the record under ``decisions``, or ``Command(goto=..., update=...)``;
  declares its ``destinations``, so ``builder.add_node(node)`` draws and checks the edges;
- has sync and async entry points: ``invoke`` and ``ainvoke``/``astream`` of the graph run the
  node natively; an async call runs the decision on a worker thread, off the event loop.

Example:
    >>> from typing import TypedDict
    >>> from langgraph.graph import END, START, StateGraph
    >>> from agentgraph.nodes.kernel import ControlNode, NodeResult
    >>> from agentgraph.records.decisions import DecisionState, SQLiteDecisionLog
    >>> class State(DecisionState, total=False):
    ...     text: str
    ...     loud: str
    >>> log = SQLiteDecisionLog(":memory:")
    >>> def shout(call):
    ...     loud = call.value.upper()
    ...     return NodeResult({"loud": loud}, output=loud, strategy="rules", goto="done")
    >>> node = ControlNode(shout, name="shout", kind="transform", decision_log=log, destinations=("done",))
    >>> builder = StateGraph(State)
    >>> _ = builder.add_node(node).add_node("done", lambda state: {}).add_edge(START, "shout").add_edge("done", END)
    >>> graph = builder.compile()
    >>> graph.invoke({"text": "where is my order?"})["loud"]
    'WHERE IS MY ORDER?'
    >>> sorted(graph.get_graph().nodes), [(d.node, d.outcome) for d in log.decisions()]
    (['__end__', '__start__', 'done', 'shout'], [('shout', 'ok')])
    >>> import asyncio
    >>> asyncio.run(graph.ainvoke({"text": "hello"}))["loud"]
    'HELLO'
    >>> node({"text": "   "})
    Traceback (most recent call last):
    ...
    agentgraph.errors.EmptyInputError: the input (state['text']) is empty: give the node some text to work on
    >>> [d.outcome for d in log.decisions()][-1]
    'rejected'
"""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.types import Command

from agentgraph.errors import ConfigError, EmptyInputError, InputTooLargeError
from agentgraph.modes import MODES_ENV, Mode, NodeModes, check_mode
from agentgraph.records.decisions import Decision, DecisionLog, log_decision, thread_id_of
from agentgraph.shadow import ShadowEvaluator
from agentgraph.text import clean_text, require_text

MODES_CONFIG_KEY = "agentgraph_modes"
"""``config["configurable"]`` key with the modes of one invocation: a :class:`~agentgraph.modes.NodeModes`,
``{node: mode}`` or ``"node=mode,..."``."""

MAX_INPUT_CHARS = 1_000_000
"""Default ``max_input_chars``: far beyond any message a person writes, short of what would stall a node."""

InputKind = Literal["text", "value"]


def request_text(value: Any) -> str | None:
    """The text in a state value: a string, a message, or the last of a list of messages.

    Example:
        >>> from langchain_core.messages import AIMessage, HumanMessage
        >>> request_text([AIMessage("hi, how can I help?"), HumanMessage("where is order 10001?")])
        'where is order 10001?'
    """
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, Mapping):
        return value.get("content")
    return value


@dataclass(frozen=True)
class NodeCall:
    """What a node's decision gets: the state, its input as read, the mode in force and the config."""

    state: Mapping[str, Any]
    value: Any  # the input: cleaned text, or the value as it is in the state (None: the node reads no key)
    mode: Mode | None
    config: RunnableConfig

    @property
    def thread_id(self) -> str | None:
        return thread_id_of(self.config)


@dataclass(frozen=True)
class ShadowCheck:
    """A served answer to put to the teacher as well: ``teacher(config)`` returns its answer in the same shape."""

    served: Any
    teacher: Callable[[RunnableConfig], Any]
    teacher_model: str


_FROM_CALL: Any = object()


@dataclass
class NodeResult:
    """A node's decision: the state update and the fields of its record.

    ``input`` defaults to the input the node read; ``goto`` routes with ``Command`` (None: a plain update);
    ``prompt_tokens`` and ``completion_tokens`` are the small model's, for the decision's cost
    (:func:`~agentgraph.slm.base.tokens_of` sums them).
    """

    update: dict[str, Any]
    output: Any = None
    input: Any = _FROM_CALL
    confidence: float | None = None
    strategy: str | None = None
    escalated: bool = False
    outcome: str | None = "ok"
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    goto: str | None = None
    shadow: ShadowCheck | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def mode_in_force(name: str, *, config: RunnableConfig | None, mode: Mode | None, default: Mode) -> Mode:
    """The mode ``name`` runs in: this invocation's, else the factory's ``mode``, else ``AGENTGRAPH_MODES``, else ``default``.

    Example:
        >>> mode_in_force("router", config={"configurable": {"agentgraph_modes": "router=teacher"}},
        ...               mode="student", default="auto")
        'teacher'
        >>> mode_in_force("router", config={}, mode=None, default="auto")
        'auto'
    """
    configured = ((config or {}).get("configurable") or {}).get(MODES_CONFIG_KEY)
    if configured is not None:
        modes = _as_modes(configured)
        if name in modes.nodes or modes.default is not None:
            return modes.mode_of(name, default=default)
    if mode is not None:
        return check_mode(mode, node=name)
    return _env_modes(os.environ.get(MODES_ENV, "")).mode_of(name, default=default)


def _as_modes(value: Any) -> NodeModes:
    if isinstance(value, NodeModes):
        return value
    if isinstance(value, str):
        return NodeModes.parse(value)
    if isinstance(value, Mapping):
        return NodeModes.from_mapping(value)
    raise ConfigError(
        f"configurable {MODES_CONFIG_KEY!r} must be NodeModes, a mapping or 'node=mode,...', not {value!r:.60}"
    )


@cache
def _env_modes(entries: str) -> NodeModes:
    return NodeModes.parse(entries)


@cache
def _routing_class(base: type["ControlNode"], destinations: tuple[str, ...]) -> type["ControlNode"]:
    def __call__(self: ControlNode, state: Mapping[str, Any], config: RunnableConfig | None = None) -> Any:
        return self.run(state, config or {})

    # A run-time annotation: the destinations are known only when the node is made.
    __call__.__annotations__["return"] = Command[Literal[destinations]]  # type: ignore[valid-type]
    namespace = {
        "__call__": __call__,
        "__doc__": base.__doc__,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
    }
    return type(base.__name__, (base,), namespace)


class ControlNode(RunnableCallable):
    """A LangGraph node around one decision function (see the module docstring for what it adds).

    Args:
        decide: the node's decision, ``NodeCall -> NodeResult``.
        name: the node's name, in the graph and in its records.
        kind: the records' ``kind`` (route, extract, validate, ...).
        input_key: the state key read (None: the node reads the state itself; no input rule applies).
        what: what the input is, in errors ("the request (state['text']) is empty").
        reads: ``text`` (cleaned text from a string or messages) or ``value`` (as it is; None or blank is empty).
        max_input_chars: longer input is refused (None: no limit).
        decision_log: where each record is also written.
        mode: the mode given in code; None for the environment's, or ``default_mode``.
        default_mode: the node's own default; None for a node without modes.
        shadow: samples accepted student answers for a comparison with the teacher.
        destinations: where ``NodeResult.goto`` may send the graph.
        metadata: added to every record of the node (the schema's name, say).
        adecide: a native async decision; without one an async call runs ``decide`` on a worker thread.

    Calling the node as a function, ``node(state, config)``, runs it synchronously, as a graph would.
    """

    def __new__(cls, *args: Any, destinations: Sequence[str] = (), **kwargs: Any) -> "ControlNode":
        # StateGraph.add_node reads a node's destinations from its __call__'s return annotation,
        # which belongs to a class: each set of destinations gets its own (cached) subclass.
        return super().__new__(_routing_class(cls, tuple(destinations)) if destinations else cls)

    def __init__(
        self,
        decide: Callable[[NodeCall], NodeResult],
        *,
        name: str,
        kind: str,
        input_key: str | None = "text",
        what: str = "input",
        reads: InputKind = "text",
        max_input_chars: int | None = MAX_INPUT_CHARS,
        decision_log: DecisionLog | None = None,
        mode: Mode | None = None,
        default_mode: Mode | None = None,
        shadow: ShadowEvaluator | None = None,
        destinations: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        adecide: Callable[[NodeCall], Awaitable[NodeResult]] | None = None,
    ) -> None:
        super().__init__(self.run, self.arun, name=name, trace=False)
        self.name: str = name
        if mode is not None:
            check_mode(mode, node=name)
        self.decide, self.adecide = decide, adecide
        self.kind, self.input_key, self.what, self.reads = kind, input_key, what, reads
        self.max_input_chars = max_input_chars
        self.decision_log, self.shadow = decision_log, shadow
        self.mode, self.default_mode = mode, default_mode
        self.destinations = tuple(destinations)
        self.metadata = dict(metadata or {})

    def __call__(self, state: Mapping[str, Any], config: RunnableConfig | None = None) -> Any:
        return self.run(state, config or {})

    def run(self, state: Mapping[str, Any], config: RunnableConfig) -> Any:
        started = time.perf_counter()
        call = self.prepare(state, config, started)
        return self.finish(call, self.decide(call), started)

    async def arun(self, state: Mapping[str, Any], config: RunnableConfig) -> Any:
        started = time.perf_counter()
        call = self.prepare(state, config, started)
        return self.finish(call, await self.decide_async(call), started)

    async def decide_async(self, call: NodeCall) -> NodeResult:
        """The decision on ``call``, natively async where the node has one, else on a worker thread."""
        if self.adecide is not None:
            return await self.adecide(call)
        return await asyncio.to_thread(self.decide, call)

    def mode_of(self, config: RunnableConfig | None) -> Mode | None:
        """The mode this node runs in under ``config`` (None for a node without modes)."""
        if self.default_mode is None:
            return None
        return mode_in_force(self.name, config=config, mode=self.mode, default=self.default_mode)

    def prepare(self, state: Mapping[str, Any], config: RunnableConfig, started: float) -> NodeCall:
        """The call for ``state``: its input read and checked (a refusal logged and raised), and the mode."""
        mode = self.mode_of(config)
        if self.input_key is None:
            return NodeCall(state=state, value=None, mode=mode, config=config)
        raw = state.get(self.input_key)
        try:
            value = self.read_input(raw)
        except (EmptyInputError, InputTooLargeError) as exc:
            shown = request_text(raw) if self.reads == "text" else raw
            self.log(
                Decision(
                    node=self.name, kind=self.kind, input=shown, outcome="rejected", thread_id=thread_id_of(config),
                    latency_ms=(time.perf_counter() - started) * 1000,
                    metadata={**self.metadata, "mode": mode, "error": str(exc)},
                )
            )  # fmt: skip
            raise
        return NodeCall(state=state, value=value, mode=mode, config=config)

    def read_input(self, raw: Any) -> Any:
        """The input in ``raw`` by this node's rule; raises on an empty or oversized one."""
        what = f"{self.what} (state[{self.input_key!r}])"
        # A value that is a list (a structured output) is read as messages only when it holds messages, or nothing.
        sequence = isinstance(raw, list | tuple)
        messages = isinstance(raw, BaseMessage) or (sequence and (not raw or isinstance(raw[-1], BaseMessage)))
        text = request_text(raw) if self.reads == "text" or messages else raw
        if isinstance(text, str) and self.max_input_chars is not None and len(text) > self.max_input_chars:
            raise InputTooLargeError(
                f"the {what} holds {len(text):,} characters, over this node's max_input_chars={self.max_input_chars:,}"
            )
        if self.reads == "text":
            return require_text(text, what=what)
        if text is None or (isinstance(text, str) and not clean_text(text).strip()):
            raise EmptyInputError(f"the {what} is empty: there is nothing to work on")
        return raw

    def finish(self, call: NodeCall, result: NodeResult, started: float) -> Any:
        """The record of ``result`` logged (and shadowed), and the node's return value."""
        decision = Decision(
            node=self.name,
            kind=self.kind,
            input=call.value if result.input is _FROM_CALL else result.input,
            output=result.output,
            confidence=result.confidence,
            strategy=result.strategy,
            escalated=result.escalated,
            outcome=result.outcome,
            model=result.model,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            thread_id=call.thread_id,
            metadata={**self.metadata, **({"mode": call.mode} if call.mode else {}), **result.metadata},
        )
        self.log(decision)
        if self.shadow is not None and result.shadow is not None:
            check = result.shadow
            self.shadow.evaluate(
                decision, check.served, check.teacher, teacher_model=check.teacher_model, decision_log=self.decision_log
            )
        update = {**result.update, "decisions": [decision]}
        return Command(goto=result.goto, update=update) if result.goto is not None else update

    def log(self, decision: Decision) -> Decision:
        return log_decision(self.decision_log, decision)
