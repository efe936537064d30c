"""The only fake in the tests: a scripted langchain-core chat model standing in for the frontier LLM.

Its replies are tool calls, which is what ``with_structured_output`` parses. It records
every call it gets, so a test that claims "no LLM call" attaches one and asserts
``llm.calls == []``: with no LLM attached, 0 calls would hold whatever the graph did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from pydantic import Field


class ToolCallingFakeChatModel(GenericFakeChatModel):
    """Scripted replies; binding tools is accepted, so ``with_structured_output`` works on it."""

    calls: list[list[BaseMessage]] = Field(default_factory=list, description="the messages of every call, in order")

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        # Streaming and async calls end here too, so every call is recorded.
        self.calls.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


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


def answering_llm(reply: str = "I am the LLM.", *, times: int = 100) -> ToolCallingFakeChatModel:
    """A model that answers anything with ``reply`` (up to ``times`` calls), recording each call."""
    return scripted_llm([AIMessage(reply)] * times)


def tool_call(name: str, **args: Any) -> AIMessage:
    """A reply that calls the tool ``name`` (a structured-output schema) with ``args``."""
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": "call-1"}])
