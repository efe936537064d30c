"""The schema enforcer as LangChain v1 middleware: each request becomes a validated object before the model runs.

:class:`SchemaEnforcerMiddleware` runs when the agent starts a turn. The schema enforcer node
(:func:`~agentgraph.nodes.schema_enforcer.create_schema_enforcer`, built from the SLM, the schema and
the options given) turns the person's message into a valid instance of the schema (the SLM under a
grammar, one repair, then ``llm=`` when given), and the agent's state gets it under ``state_key``:

- tools read it from the state (``InjectedState`` or ``ToolRuntime.state``) instead of parsing
  the message again;
- the model is shown it too, as JSON at the end of its system message (``show_model=False`` keeps
  the model's prompt as it is).

When no valid instance comes out the key holds None and a
:class:`~agentgraph.llm.HumanHandoff` is under ``handoff_key``; the agent carries on without an
object (the model still sees the message). The node's record goes under ``decisions`` and to
``decision_log=``.

This middleware fills a state key from the request; the agent's final ``response_format`` is
left to the model.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from pydantic import BaseModel, Field
    >>> from agentgraph.middleware import SchemaEnforcerMiddleware
    >>> from agentgraph.slm import TransformersSLM
    >>> class OrderRequest(BaseModel):
    ...     order_id: str | None = Field(default=None, pattern=r"^\\d{4,20}$", description="the order number, digits only")
    >>> llm = FakeMessagesListChatModel(responses=[AIMessage("Order 4587345 is on its way.")])
    >>> extract = SchemaEnforcerMiddleware(TransformersSLM(), OrderRequest, state_key="order")
    >>> agent = create_agent(llm, middleware=[extract])
    >>> agent.invoke({"messages": [("user", "Where is order 4587345?")]})["order"]
    OrderRequest(order_id='4587345')
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, get_type_hints

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain_core.messages import SystemMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel

from agentgraph.llm import HumanHandoff
from agentgraph.middleware.agent_state import arun_node, new_turn_text, run_node
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.records.decisions import DecisionState
from agentgraph.slm import SLM


class SchemaEnforcerMiddleware(AgentMiddleware):
    """Extracts a validated ``schema`` instance from each new request into the agent's state.

    Args:
        slm: the small model that extracts.
        schema: the pydantic model to produce (its validators may read the message, see
            :func:`~agentgraph.nodes.schema_enforcer.source_text_of`).
        state_key: the agent's state key for the instance (None after a handoff).
        handoff_key: the state key for the :class:`~agentgraph.llm.HumanHandoff` (None when an instance was made).
        show_model: show the model the instance, in its system message.
        **enforcer_options: the rest of :func:`~agentgraph.nodes.schema_enforcer.create_schema_enforcer`'s
            keywords (``llm``, ``decision_log``, ``mode``, ``shadow``, ``max_tokens``, ``name``...).
    """

    def __init__(
        self,
        slm: SLM,
        schema: type[BaseModel],
        *,
        state_key: str = "extracted",
        handoff_key: str = "handoff",
        show_model: bool = True,
        **enforcer_options: Any,
    ) -> None:
        self.node = create_schema_enforcer(
            slm, schema, input_key="text", output_key=state_key, handoff_key=handoff_key, **enforcer_options
        )
        self.schema, self.state_key, self.show_model = schema, state_key, show_model
        # The keys are the caller's to name, so the agent's state gains them through a schema made here.
        self.state_schema = TypedDict(  # type: ignore[misc]
            f"{schema.__name__}State",
            {
                state_key: schema | None,
                handoff_key: HumanHandoff | None,
                **get_type_hints(DecisionState, include_extras=True),
            },
            total=False,
        )

    def before_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        text = new_turn_text(state["messages"])
        return None if text is None else run_node(self.node, {"text": text})

    async def abefore_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        text = new_turn_text(state["messages"])
        return None if text is None else await arun_node(self.node, {"text": text})

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        return handler(self.shown(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        return await handler(self.shown(request))

    def shown(self, request: ModelRequest) -> ModelRequest:
        """``request`` with the extracted instance at the end of its system message (as it is without one)."""
        value = request.state.get(self.state_key)
        if not self.show_model or not isinstance(value, BaseModel):
            return request
        note = f"The person's request as a validated {self.schema.__name__}: {value.model_dump_json()}"
        system = f"{request.system_prompt}\n\n{note}" if request.system_prompt else note
        return request.override(system_message=SystemMessage(system))
