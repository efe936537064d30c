"""The example customer-support graph: all six control-layer nodes and the LLM, composed.

The router (the trained classifier, with its calibrated gate and out-of-scope
detector) sends each request down one of five paths:

- ``lookup`` (track an order or a refund, invoices, delivery times): the schema
  enforcer extracts order, invoice and amount; a read tool looks them up in
  the store; the answer is a template filled with what it found.
- ``action`` (cancel or change an order, change the delivery address, refund,
  delete the account): the schema enforcer, then the consequence modeler
  before the write tool runs. Cancellations and change requests are
  retry-safe under idempotency keys; refunds and account deletion wait for a
  person's approval (an ``interrupt``). A write never guesses its target: with
  no order number the customer is shown their recent orders and asked.
- ``knowledge`` (refund policy, payment methods, delivery options, fees,
  account how-tos): the store's policy documents (``policies/`` in this package) are
  retrieved by embedding similarity and cut by the context pruner (a
  cross-encoder) to the section that answers.
- ``escalate`` (complaints, asking for a person, out of scope, low
  confidence): the LLM, or a human-handoff ticket when none is configured.
- ``plan`` (a message that asks for several things: "cancel 48213 and tell me
  when 10001 arrives"): the LLM writes the plan once, each step runs through
  the nodes above, the SLM judges each result, and the LLM is called again
  only to replan or on an escalation (:mod:`~agentgraph.graphs.customer_support.planning`).

Every reply passes the output validator (schema, PII, length, no internal
leakage) before it leaves; a reply that still fails is held for a person.
By default the LLM is called only to plan and on the escalation path (and by the schema
enforcer when the SLM and its repair fail). Configuration switches the router
and the schema enforcer (nodes ``router`` and ``extract``) to teacher, auto or
student mode (:data:`DEFAULT_MODES`, :mod:`agentgraph.modes`) and turns on
shadow evaluation (:mod:`agentgraph.shadow`), without a change of code:
``AGENTGRAPH_MODES="router=teacher"``, ``AGENTGRAPH_SHADOW_RATE=0.05``, or the
``modes`` and ``shadow`` arguments.

The package's modules: :mod:`~agentgraph.graphs.customer_support.graph` (the wiring,
and the Agent Server's factories), :mod:`~agentgraph.graphs.customer_support.parts`
(the models and stores, and the nodes built from them),
:mod:`~agentgraph.graphs.customer_support.state`, :mod:`~agentgraph.graphs.customer_support.routes`
(paths, tools, the write rule and the clarifying questions),
:mod:`~agentgraph.graphs.customer_support.policies` (the policy documents, their retrieval
and reranker), :mod:`~agentgraph.graphs.customer_support.replies`,
:mod:`~agentgraph.graphs.customer_support.shop` (the store and its tools),
:mod:`~agentgraph.graphs.customer_support.ticket` (what the schema enforcer extracts),
:mod:`~agentgraph.graphs.customer_support.planning` (the planning path),
:mod:`~agentgraph.graphs.customer_support.training` (the router's and the act detector's
training), :mod:`~agentgraph.graphs.customer_support.bitext` (the Bitext data and its
intents) and :mod:`~agentgraph.graphs.customer_support.distillation` (the data and the
extraction schema ``agentgraph distill`` trains a small model on).

Example:
    >>> import tempfile
    >>> from agentgraph.graphs.customer_support import build_customer_support_graph
    >>> from agentgraph.running import run_turn
    >>> graph = build_customer_support_graph(data_dir=tempfile.mkdtemp())
    >>> turn = run_turn(graph, "Where is my order 10001?", thread_id="doc-1")
    >>> turn.route, turn.llm_calls, "10001" in turn.response
    ('lookup', 0, True)
"""

from agentgraph.graphs.customer_support.bitext import (
    CUSTOMER_SUPPORT_INTENTS,
    SPLIT_SEED,
    SupportRequest,
    customer_support_csv,
    load_customer_support,
    split_customer_support,
)
from agentgraph.graphs.customer_support.distillation import SupportExtraction, customer_support_examples
from agentgraph.graphs.customer_support.graph import (
    build_customer_support_graph,
    compose,
    make_checkpointer,
    make_graph,
    plan_tool_call,
    tool_node_for,
)
from agentgraph.graphs.customer_support.parts import (
    CONSEQUENCE_POLICY,
    DEFAULT_MODES,
    LLM_STEP_TYPES,
    CustomerSupportParts,
    default_data_dir,
)
from agentgraph.graphs.customer_support.policies import (
    POLICY_SECTION_OF_INTENT,
    PolicyRetriever,
    PolicySection,
    load_policy_sections,
    policy_relevance_pairs,
    support_relevance_pairs,
    support_reranker_folder,
)
from agentgraph.graphs.customer_support.replies import FORBIDDEN_IN_REPLIES, answer, deliver, tool_reply
from agentgraph.graphs.customer_support.routes import (
    ACTION_PHRASES,
    CLARIFICATION_POLICY,
    ORDER_REFERENCE,
    ORDER_VERBS,
    READ_TOOLS,
    ROUTES,
    TOOL_OF_INTENT,
    WRITE_POLICY,
    Route,
    support_router,
    support_routing,
)
from agentgraph.graphs.customer_support.shop import DEMO_CUSTOMER, Shop, ShopError
from agentgraph.graphs.customer_support.state import STATE_SCHEMAS, CustomerSupportState, SupportReply
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.graphs.customer_support.training import (
    AUGMENTED_COPIES,
    REALISTIC_SOURCES,
    ROUTER_SETTINGS,
    example_data,
    router_training_rows,
    support_act_detector,
    support_router_path,
    train_support_router,
)

__all__ = [
    "ACTION_PHRASES",
    "AUGMENTED_COPIES",
    "CLARIFICATION_POLICY",
    "CONSEQUENCE_POLICY",
    "CUSTOMER_SUPPORT_INTENTS",
    "CustomerSupportParts",
    "CustomerSupportState",
    "DEFAULT_MODES",
    "DEMO_CUSTOMER",
    "FORBIDDEN_IN_REPLIES",
    "LLM_STEP_TYPES",
    "ORDER_REFERENCE",
    "ORDER_VERBS",
    "POLICY_SECTION_OF_INTENT",
    "PolicyRetriever",
    "PolicySection",
    "READ_TOOLS",
    "REALISTIC_SOURCES",
    "ROUTER_SETTINGS",
    "ROUTES",
    "Route",
    "SPLIT_SEED",
    "STATE_SCHEMAS",
    "Shop",
    "ShopError",
    "SupportExtraction",
    "SupportReply",
    "SupportRequest",
    "SupportTicket",
    "TOOL_OF_INTENT",
    "WRITE_POLICY",
    "answer",
    "build_customer_support_graph",
    "compose",
    "default_data_dir",
    "customer_support_csv",
    "customer_support_examples",
    "deliver",
    "example_data",
    "load_customer_support",
    "load_policy_sections",
    "make_checkpointer",
    "make_graph",
    "plan_tool_call",
    "policy_relevance_pairs",
    "router_training_rows",
    "split_customer_support",
    "support_act_detector",
    "support_relevance_pairs",
    "support_reranker_folder",
    "support_router",
    "support_router_path",
    "support_routing",
    "tool_node_for",
    "tool_reply",
    "train_support_router",
]
