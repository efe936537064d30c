"""What the middleware read from an agent's messages, and how they run a control node inside a hook.

A middleware hook gets the agent's state (or a ``ModelRequest``), not the node's: it reads the
text the node works on from the messages, runs the node on a state made of that text, and acts on
the node's update. The node still does everything it does in a graph: it decides, logs its
:class:`~agentgraph.records.decisions.Decision` (with the agent's thread id, from the running
config) and applies the mode in force.

Example:
    >>> from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    >>> turn = [HumanMessage("where is order 10001?")]
    >>> new_turn_text(turn)
    'where is order 10001?'
    >>> later = [*turn, AIMessage("", tool_calls=[{"name": "lookup", "args": {}, "id": "c1"}]),
    ...          ToolMessage("shipped", tool_call_id="c1")]
    >>> new_turn_text(later) is None
    True
    >>> final_reply([*later, AIMessage("It has shipped.")]).text, final_reply(later)
    ('It has shipped.', None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.config import get_config

from agentgraph.nodes.kernel import ControlNode


def new_turn_text(messages: Sequence[BaseMessage]) -> str | None:
    """The text of the last message when it is a person's: a new turn to decide on; None in the middle of a turn.

    After a tool result the last message is a ``ToolMessage``: the turn's request was decided on already.
    """
    return messages[-1].text if messages and isinstance(messages[-1], HumanMessage) else None


def final_reply(messages: Sequence[BaseMessage]) -> AIMessage | None:
    """The last message when it is the model's answer to the person: text, and no tool calls (None otherwise)."""
    last = messages[-1] if messages else None
    if isinstance(last, AIMessage) and not last.tool_calls and last.text.strip():
        return last
    return None


def run_node(node: ControlNode, state: Mapping[str, Any]) -> dict[str, Any]:
    """``node``'s update for ``state``, run under the agent's config (its thread id goes into the record)."""
    return node(state, get_config())


async def arun_node(node: ControlNode, state: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_node` for an async agent: the node's own async entry point."""
    return await node.ainvoke(state, get_config())
