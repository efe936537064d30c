"""A scripted stand-in for the frontier LLM that knows the right answer to each request, for the benchmarks.

:class:`KnowingTeacher` answers a structured call (``with_structured_output``
binds its schema as a tool) with the arguments it was given for that tool and
the request the prompt holds, and any other call with a short reply. Each reply
carries usage the way a provider reports it, counted at about four characters a
token: the prompt is the messages and the bound tool's JSON schema (a provider
counts the tool definition as input), the completion is the reply. A structured
reply carries the log-probs of its JSON, every token certain, as a provider's
JSON-schema output with log-probs would for an answer it is sure of: the router's
write rule reads the teacher's confidence from them.

Example:
    >>> from langchain_core.messages import HumanMessage, SystemMessage
    >>> from pydantic import BaseModel
    >>> class Route(BaseModel):
    ...     intent: str
    >>> teacher = KnowingTeacher(answers={"cancel order 12345": {"Route": {"intent": "cancel_order"}}})
    >>> reply = teacher.with_structured_output(Route, include_raw=True).invoke(
    ...     [SystemMessage("Route the request."), HumanMessage("Request: cancel order 12345")])
    >>> reply["parsed"].intent, reply["raw"].usage_metadata["input_tokens"] > 0
    ('cancel_order', True)
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from agentgraph.records.costs import ModelPrice, PriceTable
from agentgraph.text import clean_text

TEACHER_MODEL = "scripted-teacher"
TEACHER_PRICES = PriceTable(llm={TEACHER_MODEL: ModelPrice(input=2.0, output=8.0)}, slm_per_hour=0.10)
"""The benchmarks' default prices: the teacher at $2 / $8 per 1M input / output tokens (an efficient-tier
frontier model), the SLM's machine at $0.10 an hour (two CPU cores)."""
ESCALATION_REPLY = "I'm sorry about this. A colleague will look into it and write to you today."


def tokens_of(text: str) -> int:
    """About four characters a token, the rule of thumb for English with the common tokenizers."""
    return len(text) // 4


class KnowingTeacher(GenericFakeChatModel):
    """Answers each request as ``answers`` says: cleaned request text -> tool name -> the tool call's arguments.

    The request is found in the last user message (the message itself, or the longest known request it
    contains: a node may wrap it in instructions); a structured call about a request or a tool it has no
    answer for raises, so a benchmark cannot score a teacher that was never told the answer.
    """

    answers: dict[str, dict[str, dict[str, Any]]]
    model_name: str = TEACHER_MODEL
    messages: Any = Field(default=iter(()))
    tool: dict[str, Any] | None = Field(default=None, description="the bound tool, in OpenAI's format")

    def bind_tools(self, tools: Any, **kwargs: Any) -> KnowingTeacher:
        return self.model_copy(update={"tool": convert_to_openai_tool(tools[0])})

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any):
        prompt = sum(tokens_of(m.text) for m in messages) + 8 * len(messages)  # 8: each message's role and framing
        if self.tool is None:
            reply = AIMessage(ESCALATION_REPLY)
            completion = tokens_of(reply.text)
        else:
            name = self.tool["function"]["name"]
            request = self.request_in(next(m for m in reversed(messages) if isinstance(m, HumanMessage)).text)
            if name not in self.answers[request]:
                raise KeyError(f"the teacher knows no {name} answer for {request!r}")
            reply = AIMessage("", tool_calls=[{"name": name, "args": self.answers[request][name],
                                               "id": uuid.uuid4().hex}])  # fmt: skip
            answer = json.dumps(reply.tool_calls[0]["args"])
            prompt += tokens_of(json.dumps(self.tool))
            completion = tokens_of(answer) + 4
            # Log-probs of the answer as a provider's JSON-schema output reports them (every token certain: the
            # teacher knows), so a node that measures the teacher's confidence finds it measured.
            reply.response_metadata["logprobs"] = {
                "content": [{"token": answer[at : at + 4], "logprob": 0.0} for at in range(0, len(answer), 4)]
            }
        reply.response_metadata["model_name"] = self.model_name
        reply.usage_metadata = {"input_tokens": prompt, "output_tokens": completion,
                                "total_tokens": prompt + completion}  # fmt: skip
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def request_in(self, asked: str) -> str:
        text = clean_text(asked)
        if text in self.answers:
            return text
        # The router may have cut the message further; another node may have wrapped it in instructions.
        known = [t for t in self.answers if t in text or text.startswith(t) or t.startswith(text)]
        if not known:
            raise KeyError(f"the teacher was told no answer for {asked!r}")
        return max(known, key=len)

    @property
    def _llm_type(self) -> str:
        return TEACHER_MODEL
