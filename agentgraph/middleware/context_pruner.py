"""The context pruner as LangChain v1 middleware: the model sees only the retrieved context that earns its tokens.

:class:`ContextPrunerMiddleware` wraps the agent's model call. The tool results of the current turn
(the ``ToolMessage`` s after the person's last message; only those of ``retrieval_tools`` when given) are the
chunks, the person's last message the query: the context pruner node
(:func:`~agentgraph.nodes.context_pruner.create_context_pruner`, built from the reranker and options
given) reranks them with its cross-encoder, keeps the best under ``top_k``, ``min_score`` and
``token_budget`` and drops near-duplicates. The model is called with every dropped result's content
replaced by a short placeholder (the message stays, so each tool call keeps its answer, and its
``response_metadata["context_pruner"]`` says it was pruned).

The agent's state keeps every tool result as it came: pruning changes what this model call is
shown, not the record. The node's decision (every kept and dropped chunk, with its reason) goes
under ``decisions`` and to ``decision_log=``. Name the retrieval tools in ``retrieval_tools``: the result of
a tool that did something (an order lookup, a refund) is then never pruned.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    >>> from agentgraph.graphs.customer_support import support_reranker_folder
    >>> from agentgraph.middleware import ContextPrunerMiddleware
    >>> from agentgraph.nodes.context_pruner import Reranker
    >>> class RecordingModel(FakeMessagesListChatModel):
    ...     seen: list = []
    ...     def _generate(self, messages, *args, **kwargs):
    ...         self.seen.append(messages)
    ...         return super()._generate(messages, *args, **kwargs)
    >>> llm = RecordingModel(responses=[AIMessage("Open Orders and choose Request refund.")])
    >>> pruner = ContextPrunerMiddleware(Reranker(support_reranker_folder()), top_k=1)
    >>> agent = create_agent(llm, middleware=[pruner])
    >>> calls = [{"name": "search", "args": {}, "id": f"c{i}"} for i in range(2)]
    >>> result = agent.invoke({"messages": [
    ...     HumanMessage("I want my money back"), AIMessage("", tool_calls=calls),
    ...     ToolMessage("To request a refund, open Orders and choose Request refund.", tool_call_id="c0"),
    ...     ToolMessage("Our newsletter comes out every Monday.", tool_call_id="c1")]})
    >>> [message.content for message in llm.seen[0][2:]]
    ['To request a refund, open Orders and choose Request refund.', '[left out: not relevant enough to the request]']
    >>> result["messages"][3].content  # the state keeps what the tool returned
    'Our newsletter comes out every Monday.'
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse, ModelRequest, ModelResponse
from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage
from langgraph.types import Command

from agentgraph.middleware.agent_state import arun_node, run_node
from agentgraph.nodes.context_pruner import KeptChunk, Reranker, create_context_pruner
from agentgraph.records.decisions import DecisionState

PRUNED_PLACEHOLDER = "[left out: not relevant enough to the request]"
"""What the model is shown instead of a tool result the pruner dropped."""


class ContextPrunerMiddleware(AgentMiddleware):
    """Reranks this turn's tool results against the request and shows the model only the ones kept.

    Args:
        reranker: the cross-encoder (:class:`~agentgraph.nodes.context_pruner.Reranker`).
        retrieval_tools: the names of the tools whose results may be pruned (None: every tool's).
        placeholder: what the model is shown instead of a dropped result.
        **pruner_options: the rest of :func:`~agentgraph.nodes.context_pruner.create_context_pruner`'s
            keywords (``top_k``, ``min_score``, ``dedupe_threshold``, ``token_budget``, ``count_tokens``,
            ``decision_log``, ``name``).
    """

    state_schema = DecisionState  # type: ignore[assignment]

    def __init__(
        self,
        reranker: Reranker,
        *,
        retrieval_tools: Collection[str] | None = None,
        placeholder: str = PRUNED_PLACEHOLDER,
        **pruner_options: Any,
    ) -> None:
        self.node = create_context_pruner(
            reranker, query_key="query", chunks_key="chunks", output_key="context", **pruner_options
        )
        self.retrieval_tools = None if retrieval_tools is None else frozenset(retrieval_tools)
        self.placeholder = placeholder

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | ExtendedModelResponse:
        query, retrieved = self._retrieved(request.messages)
        if not retrieved:
            return handler(request)
        update = run_node(self.node, {"query": query, "chunks": [request.messages[i].text for i in retrieved]})
        return self._respond(handler(self._pruned(request, retrieved, update["context"])), update)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | ExtendedModelResponse:
        query, retrieved = self._retrieved(request.messages)
        if not retrieved:
            return await handler(request)
        update = await arun_node(self.node, {"query": query, "chunks": [request.messages[i].text for i in retrieved]})
        return self._respond(await handler(self._pruned(request, retrieved, update["context"])), update)

    def _retrieved(self, messages: list[AnyMessage]) -> tuple[str, list[int]]:
        """The person's last message and the positions of the tool results since that may be pruned."""
        start = next((i for i in reversed(range(len(messages))) if isinstance(messages[i], HumanMessage)), None)
        if start is None or not messages[start].text.strip():
            return "", []
        return messages[start].text, [
            i for i, message in enumerate(messages[start:], start)
            if isinstance(message, ToolMessage) and (self.retrieval_tools is None or message.name in self.retrieval_tools)
        ]  # fmt: skip

    def _pruned(self, request: ModelRequest, retrieved: list[int], kept: list[KeptChunk]) -> ModelRequest:
        """``request`` with the content of every retrieved message the pruner did not keep replaced."""
        dropped = set(retrieved) - {retrieved[chunk.index] for chunk in kept}
        messages = [
            message.model_copy(update={
                "content": self.placeholder, "artifact": None,
                "response_metadata": {**message.response_metadata, "context_pruner": {"dropped": True}},
            }) if i in dropped else message
            for i, message in enumerate(request.messages)
        ]  # fmt: skip
        return request.override(messages=messages)

    @staticmethod
    def _respond(response: ModelResponse, update: dict[str, Any]) -> ExtendedModelResponse:
        return ExtendedModelResponse(
            model_response=response, command=Command(update={"decisions": update["decisions"]})
        )
