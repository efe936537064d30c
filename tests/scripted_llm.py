"""The only fake in the tests: a scripted langchain-core chat model standing in for the frontier LLM.

Its replies are tool calls, which is what ``with_structured_output`` parses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage


class ToolCallingFakeChatModel(GenericFakeChatModel):
    """Scripted replies; binding tools is accepted, so ``with_structured_output`` works on it."""

    def bind_tools(self, tools, **kwargs):
        return self


def scripted_llm(*replies: AIMessage | Exception | Iterable[AIMessage]) -> ToolCallingFakeChatModel:
    """A model that answers ``replies`` in order (an exception is raised in its turn; an iterable is spliced in)."""

    def script():
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            if isinstance(reply, AIMessage):
                yield reply
            else:
                yield from reply

    return ToolCallingFakeChatModel(messages=script())


def tool_call(name: str, **args: Any) -> AIMessage:
    """A reply that calls the tool ``name`` (a structured-output schema) with ``args``."""
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": "call-1"}])
