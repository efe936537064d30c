"""What the example graph is made of: the models, the store, the durable stores, and the nodes built from them.

:class:`CustomerSupportParts` loads everything once (the SLM, the router's
classifier and act detector, the reranker, the shop, the idempotency keys, the
trace store and decision log) and :meth:`CustomerSupportParts.nodes` builds the
graph's nodes over them: the router, the schema enforcer (``extract``), the read
tools, the guarded write tools under :data:`CONSEQUENCE_POLICY`, the retrieval
and the context pruner, the escalation and the output validator.

Example:
    >>> from agentgraph.graphs.customer_support.parts import DEFAULT_MODES, LLM_STEP_TYPES
    >>> DEFAULT_MODES
    {'router': 'student', 'extract': 'auto'}
    >>> LLM_STEP_TYPES["guarded_tools"]
    'classify_tool'
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.prebuilt import ToolNode

from agentgraph.checkpointing import postgres_checkpointer, sqlite_checkpointer
from agentgraph.classifier import IntentClassifier
from agentgraph.distill.extract import ExtractionArtifact, load_extraction_artifact
from agentgraph.distill.gate import load_router_strategy
from agentgraph.distill.registry import ModelRegistry, RegistryEntry
from agentgraph.distill.train import DistillError
from agentgraph.errors import ConfigError
from agentgraph.graphs.customer_support.bitext import CUSTOMER_SUPPORT_INTENTS
from agentgraph.graphs.customer_support.planning import CAPABILITIES, begin_plan, observe_step, run_step, summarize
from agentgraph.graphs.customer_support.policies import PolicyRetriever, load_policy_sections, support_reranker_folder
from agentgraph.graphs.customer_support.replies import FORBIDDEN_IN_REPLIES
from agentgraph.graphs.customer_support.routes import READ_TOOLS, support_routing
from agentgraph.graphs.customer_support.shop import Shop
from agentgraph.graphs.customer_support.state import STATE_SCHEMAS, CustomerSupportState, SupportReply
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.graphs.customer_support.training import support_act_detector, support_router_path
from agentgraph.idempotency import IdempotencyStore, open_idempotency_store
from agentgraph.modes import Mode, NodeModes
from agentgraph.nodes.canary import create_canary
from agentgraph.nodes.consequence import ConsequencePolicy, create_guarded_tool_node
from agentgraph.nodes.context_pruner import Reranker, create_context_pruner
from agentgraph.nodes.kernel import ControlNode
from agentgraph.nodes.loop import create_evaluator, create_planner
from agentgraph.nodes.loop_verdicts import VerdictClassifier, load_verdict_classifier
from agentgraph.nodes.output_validator import (
    create_output_validator,
    length_check,
    pattern_check,
    pii_check,
    schema_check,
)
from agentgraph.nodes.router import LLMStrategy, create_escalation_node, create_router
from agentgraph.nodes.schema_enforcer import create_schema_enforcer
from agentgraph.postgres import is_postgres_url
from agentgraph.prompting import load_prompt
from agentgraph.records.decisions import DecisionLog
from agentgraph.records.traces import LLMCallRecorder, open_trace_store
from agentgraph.routing import ClassifierStrategy, RoutingStrategy
from agentgraph.shadow import ShadowConfig, ShadowEvaluator
from agentgraph.slm import SLM, TransformersSLM, load_slm
from agentgraph.slm.models import cache_dir
from agentgraph.tiers import LLMTiers


def default_data_dir() -> Path:
    """Where the example keeps its store, logs, threads and model registry unless told: ``cache_dir()/customer-support``."""
    return cache_dir() / "customer-support"


DEFAULT_MODES: dict[str, Mode] = {"router": "student", "extract": "auto"}
"""The nodes with modes, and each one's mode unless configured: the router escalates what its classifier
cannot route (the LLM answers those requests, it does not route them); the schema enforcer asks the LLM
when the SLM and its repair fail."""

LLM_STEP_TYPES = {"escalate": "escalate", "extract": "extract", "guarded_tools": "classify_tool"}
"""What the LLM does in each node that may call it: the step type its recorded calls are distilled as."""

MAX_PLANNING_CALLS = 3
"""The LLM calls one multi-step message may make: the plan, and two replans or escalations; then a person."""

CONSEQUENCE_POLICY = ConsequencePolicy(
    tools={
        "cancel_order": "retry_safe",
        "request_order_change": "retry_safe",
        "request_address_change": "retry_safe",
        "issue_refund": "irreversible",
        "delete_account": "irreversible",
    },
    editable={"issue_refund": {"amount"}},
)
"""The operator's table for the write tools: the store's own annotations can only make a call more cautious.
A reviewer may change a refund's amount, never whose order or account a write is aimed at."""


class CustomerSupportParts:
    """What the graph is made of, loaded once: the models, the store and the durable stores.

    Everything durable lives in ``data_dir`` (default ``cache_dir()/customer-support``):
    ``shop.db`` (the store), ``idempotency.db``, ``decisions.db`` (a
    :class:`~agentgraph.records.traces.SQLiteTraceStore`: the nodes' decisions and the
    LLM's calls, the training data of tomorrow; pass ``llm_call_recorder`` in a run's
    callbacks to record the calls), ``checkpoints.db`` (threads and pending approvals) and
    ``models/`` (a :class:`~agentgraph.distill.registry.ModelRegistry`, unless ``registry`` is given):
    at start the graph loads the artifact promoted there for ``extract`` (a distilled extractor
    of :class:`SupportTicket`) and for ``router`` (an :class:`~agentgraph.classifier.IntentClassifier`
    folder, or a distilled SLM router, gated, served in-process with the calibration and gate its gate
    fitted: :func:`~agentgraph.distill.gate.load_router_strategy`; ``router_path``, a classifier
    folder, wins over it), and logs that the default serves a role with none; a
    canary registered there for either role (``agentgraph models canary``) serves its share of the
    requests beside it (:func:`~agentgraph.nodes.canary.create_canary`).
    With ``database_url`` (``postgresql://...``), the idempotency keys, the trace store and
    decision log and the checkpoints (:meth:`durable_checkpointer`) live in that PostgreSQL
    database instead, so several workers, on several machines, can share them; turns then hold
    their thread with an advisory lock there (:attr:`turn_lock`). The shop, the example's own
    store, stays ``shop.db`` in ``data_dir``.
    ``llm`` answers escalations and is the router's teacher (``with_structured_output``) in
    teacher and auto mode and for shadow evaluation; ``extraction_llm`` (often the same model;
    it must support ``with_structured_output``) is the schema enforcer's fallback after the
    SLM and its repair, and its teacher. ``modes`` sets the mode of ``router`` and ``extract``
    (default: ``AGENTGRAPH_MODES``, else :data:`DEFAULT_MODES`); ``shadow`` the share of
    small-model answers the teacher checks (default: ``AGENTGRAPH_SHADOW_RATE``, else none),
    its calls recorded in the trace store. A teacher mode without its LLM hands requests to a person.
    ``tiers`` (:class:`~agentgraph.tiers.LLMTiers`, instead of ``llm`` and ``extraction_llm``) chooses the
    model per step type (:meth:`llm_for`): ``plan`` for the planner and ``replan`` for its replans, ``escalate``, ``route`` for the router's
    teacher, ``extract`` and ``classify_tool``, each with its cascade; every call records its tier.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        slm: SLM | None = None,
        llm: BaseChatModel | None = None,
        extraction_llm: BaseChatModel | None = None,
        decision_log: DecisionLog | None = None,
        idempotency_store: IdempotencyStore | None = None,
        router_path: str | os.PathLike[str] | None = None,
        reranker: Reranker | None = None,
        modes: NodeModes | None = None,
        shadow: ShadowConfig | None = None,
        database_url: str | None = None,
        registry: ModelRegistry | None = None,
        tiers: LLMTiers | None = None,
    ) -> None:
        if tiers is not None and (llm is not None or extraction_llm is not None):
            raise ConfigError("give the graph its LLM as llm= (and extraction_llm=) or as tiers=, not both")
        if database_url is not None and not is_postgres_url(database_url):
            raise ConfigError(f"database_url must be a postgresql:// URL, not {database_url!r}")
        self.database_url = database_url
        self.modes = (modes if modes is not None else NodeModes.from_env()).check_nodes(DEFAULT_MODES)
        shadow = shadow if shadow is not None else ShadowConfig.from_env()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.slm = slm if slm is not None else load_slm()
        self.llm = llm
        self.extraction_llm = extraction_llm
        self.tiers = tiers
        self.shop = Shop(self.data_dir / "shop.db")
        self.trace_store = open_trace_store(database_url or self.data_dir / "decisions.db", decision_log=decision_log)
        self.decision_log: DecisionLog = self.trace_store
        self.llm_call_recorder = LLMCallRecorder(self.trace_store, step_types=LLM_STEP_TYPES)
        self.shadow = ShadowEvaluator(shadow, callbacks=[self.llm_call_recorder]) if shadow.rate > 0 else None
        self.idempotency_store = idempotency_store or open_idempotency_store(
            database_url or self.data_dir / "idempotency.db"
        )
        self.registry = registry or ModelRegistry(self.data_dir / "models", decision_log=self.decision_log)
        self.extraction_artifact = self._extractor_of(self.registry.resolve("extract"))
        promoted = None if router_path is not None else self.registry.resolve("router")
        distilled = promoted if promoted is not None and promoted.trained_for is not None else None
        # The classifier's encoder is also the act detector's, the policy retriever's and the evaluator's, so one
        # is loaded even when a distilled SLM routes.
        self.classifier = IntentClassifier.load(
            router_path or (promoted.path if promoted and not distilled else None) or support_router_path()
        )
        self.routing = self._routing_of(distilled) if distilled else ClassifierStrategy(self.classifier)
        self.acts = support_act_detector(self.classifier.encoder)
        self.reranker = reranker or Reranker(support_reranker_folder)  # trained when a request first needs it
        self.canaries = {role: canary for role in DEFAULT_MODES if (canary := self.registry.resolve_canary(role))}
        extraction_canary, router_canary = self.canaries.get("extract"), self.canaries.get("router")
        self.candidate_extraction = self._extractor_of(extraction_canary.entry if extraction_canary else None)
        self.candidate_routing = self._routing_of(router_canary.entry) if router_canary else None

    def _routing_of(self, entry: RegistryEntry) -> RoutingStrategy:
        """What a router artifact routes with: a classifier folder's classifier (on the shared encoder), or a
        gated distilled SLM router, in-process, whose intents must all be this graph's."""
        if entry.trained_for is None:
            return ClassifierStrategy(IntentClassifier.load(entry.path, encoder=self.classifier.encoder))
        if entry.trained_for != "route":
            raise ConfigError(
                f"the router artifact {entry.path} is a distilled {entry.trained_for!r} model, not a router: register "
                "an IntentClassifier folder or a distilled router, or `agentgraph models rollback router`"
            )
        try:
            strategy = load_router_strategy(entry.path, self._artifact_slm(entry.path), gated=True)
        except DistillError as error:
            raise ConfigError(f"the router artifact cannot serve: {error}") from error
        unknown = sorted(set(strategy.intent_labels) - set(CUSTOMER_SUPPORT_INTENTS))
        if unknown:
            raise ConfigError(
                f"the distilled router {entry.path} answers intents this graph has no route for: {', '.join(unknown)}"
            )
        return strategy

    def _extractor_of(self, entry: RegistryEntry | None) -> ExtractionArtifact | None:
        if entry is None:
            return None
        artifact = load_extraction_artifact(entry.path, self._artifact_slm(entry.path))
        if artifact["schema"] is not SupportTicket:
            raise ConfigError(
                f"the extractor {entry.path} fills {artifact['schema'].__name__}; this graph's extract node "
                "fills SupportTicket: train one on it (--schema), or `agentgraph models rollback extract`"
            )
        return artifact

    def _artifact_slm(self, folder: str) -> SLM | None:
        """A promoted model folder in-process, computing in the serving SLM's dtype when that one is embedded too
        (None: the artifact's own default)."""
        return TransformersSLM(folder, dtype=self.slm.dtype) if isinstance(self.slm, TransformersSLM) else None

    def _canary(self, role: str, current: ControlNode, candidate: ControlNode) -> ControlNode:
        canary = self.canaries[role]
        return create_canary(current, candidate, share=canary.share, label=canary.entry.path)

    @cached_property
    def verdict_classifier(self) -> VerdictClassifier:
        """The planning path's evaluator: the trained verdict classifier on the router's encoder (90.6% on the
        loop engine's labelled observations, against 56% for the 135M SLM: ``benchmarks/loop.py``)."""
        return load_verdict_classifier(encoder=self.classifier.encoder)

    @cached_property
    def retriever(self) -> PolicyRetriever:
        return PolicyRetriever(load_policy_sections(), self.classifier.encoder)

    def llm_for(self, step_type: str) -> BaseChatModel | None:
        """The chat model of a step type: its tier's (with the cascade) when tiers are configured, else ``llm``
        (``extraction_llm`` for ``extract``); None: that step hands its work to a person."""
        if self.tiers is not None:
            return self.tiers.model_for(step_type)
        return self.extraction_llm if step_type == "extract" else self.llm

    def mode_of(self, node: str) -> Mode:
        return self.modes.mode_of(node, default=DEFAULT_MODES[node])

    def close(self) -> None:
        """Finish the shadow comparisons under way (their teacher calls run in the background)."""
        if self.shadow is not None:
            self.shadow.close()

    @property
    def checkpoints_path(self) -> Path:
        """Where a durable checkpointer for this data dir keeps threads (see :func:`sqlite_checkpointer`)."""
        return self.data_dir / "checkpoints.db"

    def durable_checkpointer(self) -> BaseCheckpointSaver:
        """A new checkpointer on this graph's durable threads: in ``database_url``
        (:func:`~agentgraph.checkpointing.postgres_checkpointer`, its key from ``AGENTGRAPH_CHECKPOINT_KEY``),
        else ``checkpoints.db`` in ``data_dir``. Close its ``conn`` when done."""
        if self.database_url is not None:
            return postgres_checkpointer(self.database_url, *STATE_SCHEMAS)
        return sqlite_checkpointer(self.checkpoints_path, *STATE_SCHEMAS)

    @property
    def turn_lock(self) -> dict[str, Any]:
        """How a turn holds its thread against other processes (:func:`~agentgraph.running.run_turn`'s
        ``lock_dir`` or ``database_url``): an advisory lock in ``database_url``, else lock files in ``data_dir``."""
        if self.database_url is not None:
            return {"database_url": self.database_url}
        return {"lock_dir": self.data_dir / "locks"}

    def nodes(self, *, candidates: int = 6) -> dict[str, Any]:
        """The graph's nodes made of these parts, by name: the control-layer nodes, the tool nodes and the
        retrieval of ``candidates`` policy sections for the pruner
        (:func:`~agentgraph.graphs.customer_support.graph.compose` wires them with the graph's own steps)."""
        log = self.decision_log
        tools = {tool.name: tool for tool in self.shop.tools()}
        teacher_llm = self.llm_for("route")

        def router_on(strategy: RoutingStrategy) -> ControlNode:
            return create_router(
                **support_routing(strategy, self.acts), goto=False, decision_log=log,
                mode=self.mode_of("router"), shadow=self.shadow,
                teacher=LLMStrategy(teacher_llm, CUSTOMER_SUPPORT_INTENTS) if teacher_llm is not None else None,
            )  # fmt: skip

        def extract_on(artifact: ExtractionArtifact | None) -> ControlNode:
            return create_schema_enforcer(
                **(artifact or {"slm": self.slm, "schema": SupportTicket}), llm=self.llm_for("extract"),
                decision_log=log, input_key="request", output_key="ticket", mode=self.mode_of("extract"),
                shadow=self.shadow,
            )  # fmt: skip

        router, extract = router_on(self.routing), extract_on(self.extraction_artifact)
        if self.candidate_routing is not None:
            router = self._canary("router", router, router_on(self.candidate_routing))
        if self.candidate_extraction is not None:
            extract = self._canary("extract", extract, extract_on(self.candidate_extraction))
        read_tools = ToolNode([tools[name] for name in READ_TOOLS])
        guarded_tools = create_guarded_tool_node(
            [tool for name, tool in tools.items() if name not in READ_TOOLS],
            idempotency_store=self.idempotency_store,
            policy=CONSEQUENCE_POLICY,
            slm=self.slm,
            llm=self.llm_for("classify_tool"),
            decision_log=log,
            request_key="request",
            consent_key="write_consent",
            resolve_arguments=self.shop.explicit_arguments(),
        )
        escalate = create_escalation_node(
            self.llm_for("escalate"),
            input_key="request",
            system=load_prompt("support_escalation").render(),
            decision_log=log,
        )
        prune = create_context_pruner(self.reranker, top_k=1, token_budget=400, decision_log=log)
        validate = create_output_validator(
            [schema_check(SupportReply), pii_check(), length_check(min_chars=1, max_chars=1500),
             pattern_check(FORBIDDEN_IN_REPLIES)],
            decision_log=log, input_key="draft", output_key="reply",
        )  # fmt: skip

        def retrieve(state: CustomerSupportState) -> dict[str, Any]:
            return {"query": state["request"], "chunks": self.retriever.search(state["request"], candidates)}

        plan = create_planner(
            self.llm_for("plan"), prompt=load_prompt("support_plan"), prompt_inputs={"capabilities": CAPABILITIES},
            max_llm_calls=MAX_PLANNING_CALLS, decision_log=log, replan_llm=self.llm_for("replan"),
        )  # fmt: skip
        return {
            "router": router, "extract": extract, "read_tools": read_tools, "guarded_tools": guarded_tools,
            "retrieve": retrieve, "prune": prune, "escalate": escalate, "validate": validate,
            "begin_plan": begin_plan, "plan": plan, "run_step": run_step, "observe_step": observe_step,
            "evaluate": create_evaluator(self.verdict_classifier, decision_log=log), "summarize": summarize,
        }  # fmt: skip
