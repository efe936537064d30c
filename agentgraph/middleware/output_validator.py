"""The output validator as LangChain v1 middleware: the agent's answer is checked before the person sees it.

:class:`OutputValidatorMiddleware` runs after the model. When the model's message is an answer (text,
no tool calls) the output validator node
(:func:`~agentgraph.nodes.output_validator.create_output_validator`, built from the checks and options
given) reviews its text, and the node's verdict replaces the message in the agent's state:

- ``ok``: the message stays as it is;
- ``redacted`` or ``regenerated``: the message's text becomes the accepted text;
- ``flagged`` (still failing after redaction and regeneration): the person gets ``flagged_reply``
  instead, and the :class:`~agentgraph.nodes.output_validator.ValidationReport` under ``validation``
  keeps the reason and the rejected candidate for the reviewer.

A message that calls tools is not shown to anyone, and is left alone. The report goes into the state
under ``validation`` and the node's record under ``decisions``; the node logs it to ``decision_log=``.
A ``regenerate=`` callable gets the agent's state (with the answer under ``draft``).

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from agentgraph.middleware import OutputValidatorMiddleware
    >>> from agentgraph.nodes.output_validator import pii_check
    >>> llm = FakeMessagesListChatModel(responses=[AIMessage("Write to jo@example.com about order 4587345.")])
    >>> agent = create_agent(llm, middleware=[OutputValidatorMiddleware([pii_check()])])
    >>> result = agent.invoke({"messages": [("user", "Who handles my order?")]})
    >>> result["messages"][-1].content, result["validation"].outcome
    ('Write to [EMAIL] about order 4587345.', 'redacted')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agentgraph.middleware.agent_state import arun_node, final_reply, run_node
from agentgraph.nodes.output_validator import Check, ValidationReport, create_output_validator
from agentgraph.records.decisions import DecisionState

FLAGGED_REPLY = "This answer needs a colleague's review before I can send it; they will get back to you."
"""What the person is told instead of an answer that failed validation."""


class OutputValidatorState(DecisionState, total=False):
    """What the middleware adds to the agent's state: the last answer's report (and the node's records)."""

    validation: ValidationReport


class OutputValidatorMiddleware(AgentMiddleware):
    """Validates each answer of the agent; redacts, regenerates or withholds it as the validator decides.

    Args:
        checks: the validator's checks (:func:`~agentgraph.nodes.output_validator.pii_check`, ...).
        flagged_reply: what the person gets instead of a flagged answer.
        **validator_options: the rest of :func:`~agentgraph.nodes.output_validator.create_output_validator`'s
            keywords (``regenerate``, ``max_regenerations``, ``redact_violations``, ``decision_log``, ``name``).
    """

    state_schema = OutputValidatorState  # type: ignore[assignment]

    def __init__(
        self, checks: Sequence[Check], *, flagged_reply: str = FLAGGED_REPLY, **validator_options: Any
    ) -> None:
        self.node = create_output_validator(
            checks, input_key="draft", output_key="output", report_key="validation", **validator_options
        )
        self.flagged_reply = flagged_reply

    def after_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        reply = final_reply(state["messages"])
        if reply is None:
            return None
        return self.settle(reply, run_node(self.node, {**state, "draft": reply.text}))

    async def aafter_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        reply = final_reply(state["messages"])
        if reply is None:
            return None
        return self.settle(reply, await arun_node(self.node, {**state, "draft": reply.text}))

    def settle(self, reply: AIMessage, update: Mapping[str, Any]) -> dict[str, Any]:
        """The state update for the validator's ``update`` on ``reply``: the report, and the message replaced if it changed."""
        report: ValidationReport = update["validation"]
        text = self.flagged_reply if report.flagged else update["output"]
        changes: dict[str, Any] = {"validation": report, "decisions": update["decisions"]}
        if text != reply.text:
            # The same id: the messages reducer replaces the model's message instead of appending one.
            changes["messages"] = [reply.model_copy(update={"content": text})]
        return changes
