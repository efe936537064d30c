"""The SLM router as LangChain v1 middleware: answer a confident request without the LLM, escalate the rest to it.

:class:`SLMRouterMiddleware` wraps the agent's model call. On a new turn (the last message is the
person's) the router node (:func:`~agentgraph.nodes.router.create_router`, built from the
strategies and options given) decides the message:

- routed with confidence to a route the middleware has an answer for: the answer is the model's
  response, and the LLM is not called;
- a clarifying question or an acknowledgement (with ``clarification=``): the question is the
  response; with a checkpointer the next message on the thread is read as its answer;
- escalated (unsure, out of scope, a write without the customer's consent under ``writes=``), or
  routed to a route without an answer: the LLM is called as usual.

In the middle of a turn (after a tool result) the model is called as usual. The router's keys
(:class:`~agentgraph.nodes.router.RouterState`: ``route``, ``intent``, ``route_confidence``,
``escalation_reason``, ``write_consent``, ...) and its record under ``decisions`` go into the agent's
state; the node logs the decision to ``decision_log=``. Because the answer is the model's response,
every ``after_model`` hook (the :class:`~agentgraph.middleware.OutputValidatorMiddleware`, say) checks
it as it checks the LLM's.

An answer is a string, an ``AIMessage`` (one with tool calls sends the agent to its tools; give the
tool ``return_direct=True`` to end the turn with its result), or a callable that gets the agent's
state with the router's keys and returns either.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from agentgraph.middleware import SLMRouterMiddleware
    >>> from agentgraph.nodes.router import RuleStrategy
    >>> llm = FakeMessagesListChatModel(responses=[AIMessage("Sorry to hear that, let me check."), AIMessage("")])
    >>> router = SLMRouterMiddleware(RuleStrategy({r"\\bopening hours\\b": "hours"}),
    ...                              answers={"hours": "We are open 9:00-17:00, Monday to Friday."})
    >>> agent = create_agent(llm, middleware=[router])
    >>> result = agent.invoke({"messages": [("user", "What are your opening hours?")]})
    >>> result["messages"][-1].content, result["intent"], llm.i  # llm.i: the LLM's replies used
    ('We are open 9:00-17:00, Monday to Friday.', 'hours', 0)
    >>> result = agent.invoke({"messages": [("user", "My parcel arrived damaged")]})
    >>> result["messages"][-1].content, result["escalation_reason"], llm.i
    ('Sorry to hear that, let me check.', 'no_proposal', 1)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage
from langgraph.types import Command

from agentgraph.middleware.agent_state import arun_node, new_turn_text, run_node
from agentgraph.nodes.router import RouterState, RoutingStrategy, create_router

Answer = str | AIMessage | Callable[[Mapping[str, Any]], AIMessage | str]
"""What a route answers: a reply, or ``state -> reply`` (the agent's state with the router's keys)."""


class SLMRouterMiddleware(AgentMiddleware):
    """Routes each new request with the SLM router; answers the confident ones, escalates the rest to the LLM.

    Args:
        strategies: the router's strategies (see :func:`~agentgraph.nodes.router.create_router`).
        answers: ``{route: answer}``; a route missing here is served by the LLM. Without ``routes`` a
            label's route is the label itself.
        **router_options: the rest of :func:`~agentgraph.nodes.router.create_router`'s keywords
            (``routes``, ``gate``, ``decision_log``, ``mode``, ``teacher``, ``acts``, ``writes``, ``clarification``...);
            the router reads the person's last message, so there is no ``input_key``.
    """

    # The router's own keys, so they, and a pending question, are kept on the thread.
    state_schema = RouterState  # type: ignore[assignment]

    def __init__(
        self,
        strategies: RoutingStrategy | Sequence[RoutingStrategy],
        *,
        answers: Mapping[str, Answer] | None = None,
        **router_options: Any,
    ) -> None:
        self.node = create_router(strategies, input_key="text", goto=False, **router_options)
        self.answers = dict(answers or {})

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | ExtendedModelResponse:
        text = new_turn_text(request.messages)
        if text is None:
            return handler(request)
        update = run_node(self.node, self._router_state(request, text))
        answer = self.answer(request.state, update)
        return _respond(handler(request) if answer is None else ModelResponse(result=[answer]), update)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | ExtendedModelResponse:
        text = new_turn_text(request.messages)
        if text is None:
            return await handler(request)
        update = await arun_node(self.node, self._router_state(request, text))
        answer = self.answer(request.state, update)
        return _respond(await handler(request) if answer is None else ModelResponse(result=[answer]), update)

    def answer(self, state: Mapping[str, Any], update: Mapping[str, Any]) -> AIMessage | None:
        """The reply the router's ``update`` makes without the LLM, or None when the LLM answers."""
        if update["clarification"] is not None:
            return AIMessage(update["clarification"].question)
        answer = self.answers.get(update["route"]) if update["intent"] is not None else None
        if answer is None:
            return None
        reply = answer({**state, **update}) if callable(answer) else answer
        return reply if isinstance(reply, AIMessage) else AIMessage(reply)

    def _router_state(self, request: ModelRequest, text: str) -> dict[str, Any]:
        return {"text": text, "clarification": request.state.get("clarification")}


def _respond(response: ModelResponse, update: Mapping[str, Any]) -> ExtendedModelResponse:
    """The model's response (the LLM's or the router's), with the router's keys and record for the state."""
    return ExtendedModelResponse(model_response=response, command=Command(update=dict(update)))
