"""Tool calls as a tool's schema reads them, the idempotency key a guarded call brings, and a tool call made
from an extracted object.

:func:`tool_call_from` is the step from the schema enforcer's output to a tool node: the
extracted object's fields become the tool's arguments, checked against its schema, in an
``AIMessage`` that a ``ToolNode`` or a guarded tool node runs.

Example:
    >>> from langchain_core.tools import tool
    >>> from pydantic import BaseModel
    >>> class Ticket(BaseModel):
    ...     order_id: str | None = None
    ...     refund_amount: float | None = None
    >>> @tool
    ... def issue_refund(customer_id: str, order_id: str, amount: float | None = None) -> str:
    ...     '''Refund an order, all that is left of it without an amount.'''
    ...     return f"refunded {order_id}"
    >>> @tool
    ... def cancel_order(customer_id: str, order_id: str) -> str:
    ...     '''Cancel an order.'''
    ...     return f"cancelled {order_id}"
    >>> ticket = Ticket(order_id="48213", refund_amount=20.0)
    >>> message = tool_call_from(
    ...     ticket, issue_refund, rename={"refund_amount": "amount"}, arguments={"customer_id": "C1001"}, id="call-1"
    ... )
    >>> message.tool_calls
    [{'name': 'issue_refund', 'args': {'order_id': '48213', 'amount': 20.0, 'customer_id': 'C1001'}, 'id': 'call-1', 'type': 'tool_call'}]
    >>> tool_call_from(ticket, cancel_order, arguments={"customer_id": "C1001"}).tool_calls[0]["args"]
    {'order_id': '48213', 'customer_id': 'C1001'}
    >>> tool_call_from(ticket, cancel_order)
    Traceback (most recent call last):
    ...
    agentgraph.errors.ConfigError: cancel_order needs ['customer_id'], which Ticket has no field for: ...
    >>> tool_call_from(Ticket(), cancel_order, arguments={"customer_id": "C1001"})
    Traceback (most recent call last):
    ...
    agentgraph.errors.ToolArgumentsError: Ticket does not fit cancel_order: 1 validation error ...
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph.message import add_messages
from pydantic import BaseModel, ValidationError

from agentgraph.errors import ConfigError, ToolArgumentsError
from agentgraph.records.decisions import DecisionState


def tool_call_from(
    value: BaseModel | Mapping[str, Any],
    tool: BaseTool,
    *,
    id: str | None = None,
    rename: Mapping[str, str] | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> AIMessage:
    """An AI message calling ``tool`` with ``value``'s fields as its arguments (see the module example).

    A field goes to the argument of its name, or of the name ``rename`` maps it to; fields the
    tool does not take are left out, as one extraction schema often serves several tools.
    ``arguments`` adds what the object does not hold, such as the customer's id from the state.
    A pydantic object's fields are taken as JSON values, as a model would write them.

    Args:
        value: the extracted object, or a mapping of field names to values.
        tool: the tool to call; its ``tool_call_schema`` (what a model sees) names and checks the arguments.
        id: the tool call's id (default: a fresh ``call_...`` id).
        rename: ``{field: argument}`` for fields named otherwise than the tool's arguments.
        arguments: arguments besides the object's fields.

    Raises:
        ConfigError: ``rename`` names a field ``value`` lacks, ``arguments`` gives one an object's field
            gives too, or an argument the tool requires has no field and no value in ``arguments``.
        ToolArgumentsError: the values do not fit the tool's schema (a required one is None, say).
    """
    fields = value.model_dump(mode="json") if isinstance(value, BaseModel) else dict(value)
    source = type(value).__name__
    rename = dict(rename or {})
    if unknown := set(rename) - set(fields):
        raise ConfigError(f"rename names {sorted(unknown)}, which {source} has no field for; name its fields")
    accepted = set(arguments_schema(tool).get("properties", {}))
    mapped = {rename.get(field, field): field_value for field, field_value in fields.items()}
    call_arguments = {argument: field_value for argument, field_value in mapped.items() if argument in accepted}
    if twice := set(call_arguments) & set(arguments or {}):
        raise ConfigError(f"{source} and arguments= both give {sorted(twice)} for {tool.name}: give each once")
    call_arguments |= dict(arguments or {})
    if missing := set(arguments_schema(tool).get("required", [])) - set(call_arguments):
        raise ConfigError(
            f"{tool.name} needs {sorted(missing)}, which {source} has no field for: map a field to it with "
            "rename={field: argument}, or pass it in arguments="
        )
    if (error := argument_error(tool, call_arguments)) is not None:
        raise ToolArgumentsError(f"{source} does not fit {tool.name}: {error}")
    call_id = id if id is not None else f"call_{uuid.uuid4().hex[:12]}"
    return AIMessage("", tool_calls=[{"name": tool.name, "args": call_arguments, "id": call_id, "type": "tool_call"}])


IDEMPOTENCY_KEY_ARG = "idempotency_key"
"""A tool that declares this argument as ``Annotated[str, InjectedToolArg]`` receives the call's key."""


def with_idempotency_key(tool: BaseTool, key: str) -> BaseTool:
    """``tool``, given ``key`` as its ``idempotency_key`` argument when it declares one (else ``tool`` itself).

    ToolNode drops every injected argument a call brings (so a model cannot forge one) before it
    injects state and runtime; the key is added after that, as the tool runs.
    """
    schema, visible = tool.args_schema, tool.tool_call_schema
    declares = (
        isinstance(schema, type)
        and issubclass(schema, BaseModel)
        and IDEMPOTENCY_KEY_ARG in schema.model_fields
        and IDEMPOTENCY_KEY_ARG not in getattr(visible, "model_fields", {})
    )
    if not declares:
        return tool
    return _KeyedTool(name=tool.name, description=tool.description, args_schema=schema, tool=tool, key=key)


class _KeyedTool(BaseTool):
    """A tool run with its call's idempotency key injected: only ``invoke``/``ainvoke`` are used."""

    tool: BaseTool
    key: str

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.tool.invoke(self._keyed(input), config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self.tool.ainvoke(self._keyed(input), config, **kwargs)

    def _keyed(self, call: dict[str, Any]) -> dict[str, Any]:
        return {**call, "args": {**call["args"], IDEMPOTENCY_KEY_ARG: self.key}}

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a keyed tool runs through invoke, which hands the call to the tool it keys")


def argument_error(tool: BaseTool, arguments: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` cannot go to ``tool``: its schema refuses them, or they hold a NaN or an infinity."""
    try:
        parsed = parsed_arguments(tool, arguments)
    except ValidationError as exc:
        return str(exc)
    # Pydantic floats allow NaN and infinities (also from strings such as "nan"): no amount is either.
    return "numbers must be finite (not NaN or infinity)" if _holds_non_finite(parsed) else None


def parsed_arguments(tool: BaseTool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as the tool's schema parses them (as given, for a tool whose schema is plain JSON Schema)."""
    schema = tool.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_validate(dict(arguments)).model_dump()
    return dict(arguments)


def arguments_schema(tool: BaseTool) -> dict[str, Any]:
    """The JSON Schema of the arguments a model gives ``tool`` (injected arguments are not among them)."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return dict(schema)
    if issubclass(schema, BaseModel):
        return schema.model_json_schema()
    raise ConfigError(f"{tool.name}'s arguments schema is a pydantic v1 model: give it a pydantic v2 one")


def _holds_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(v) for v in value)
    return False


class GuardedState(DecisionState):
    """The smallest state a guarded tool node runs on: the messages and the decision records."""

    messages: Annotated[list[AnyMessage], add_messages]


def state_value(state: Any, key: str) -> Any:
    """``state[key]`` of a mapping state, ``state.key`` of an object state; None where it has none."""
    return state.get(key) if isinstance(state, Mapping) else getattr(state, key, None)
