"""The control nodes as LangChain v1 middleware, for agents made with ``langchain.agents.create_agent``.

Each middleware builds its node from the node factory's own arguments and runs it inside one agent
hook; the node decides and logs its decision as it does in a graph:

- :class:`SLMRouterMiddleware` (around the model call): answers a confident request without the LLM,
  escalates the rest to it;
- :class:`SchemaEnforcerMiddleware` (when a turn starts): the request as a validated pydantic object
  in the agent's state;
- :class:`ContextPrunerMiddleware` (around the model call): the model sees only the tool results the
  cross-encoder keeps;
- :class:`OutputValidatorMiddleware` (after the model): the answer checked, redacted, regenerated or
  withheld;
- :class:`ConsequenceGuardMiddleware` (around each tool call): classified, run at most once per
  idempotency key, and an irreversible one only on a person's approval.

The first in ``middleware=[...]`` is the outermost: put the router first, so a request it answers
skips the others' model-call work, and its answer still passes the validator.

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from agentgraph.middleware import OutputValidatorMiddleware, SLMRouterMiddleware
    >>> from agentgraph.nodes.output_validator import pii_check
    >>> from agentgraph.nodes.router import RuleStrategy
    >>> llm = FakeMessagesListChatModel(responses=[AIMessage("Ask jo@example.com, she handles damaged parcels.")])
    >>> router = SLMRouterMiddleware(RuleStrategy({r"\\bopening hours\\b": "hours"}), answers={"hours": "9:00-17:00."})
    >>> agent = create_agent(llm, middleware=[router, OutputValidatorMiddleware([pii_check()])])
    >>> agent.invoke({"messages": [("user", "What are your opening hours?")]})["messages"][-1].content
    '9:00-17:00.'
    >>> agent.invoke({"messages": [("user", "My parcel arrived damaged")]})["messages"][-1].content
    'Ask [EMAIL], she handles damaged parcels.'
"""

from agentgraph.middleware.consequence_guard import ConsequenceGuardMiddleware
from agentgraph.middleware.context_pruner import ContextPrunerMiddleware
from agentgraph.middleware.output_validator import OutputValidatorMiddleware
from agentgraph.middleware.router import SLMRouterMiddleware
from agentgraph.middleware.schema_enforcer import SchemaEnforcerMiddleware

__all__ = [
    "ConsequenceGuardMiddleware",
    "ContextPrunerMiddleware",
    "OutputValidatorMiddleware",
    "SLMRouterMiddleware",
    "SchemaEnforcerMiddleware",
]
