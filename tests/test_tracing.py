"""Langfuse tracing of the customer-support graph, end to end over OTLP.

The real Langfuse SDK, through :class:`~agentgraph.tracing.DecisionTracingHandler` (its
official LangChain callback handler), exports to an OTLP HTTP receiver that this module
starts on 127.0.0.1. The tests decode what arrives (OTLP protobuf) and check the node spans,
the decision metadata on them, and the trace's session and user. The first test routes by rules
alone; the others run the example customer-support graph on the embedded SLM (slow).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agentgraph.nodes.router import RouterState, RuleStrategy, create_escalation_node, create_router
from agentgraph.running import TurnResult, run_turn
from agentgraph.tracing import DecisionTracingHandler, trace_metadata

TRACES_PATH = "/api/public/otel/v1/traces"
"""Where the Langfuse SDK posts OTLP spans under its base URL (langfuse/_client/span_processor.py)."""
METADATA = "langfuse.observation.metadata."
"""Prefix of one observation-metadata key; each value is JSON-encoded (langfuse/_client/attributes.py)."""
SESSION_ID = "session.id"
USER_ID = "user.id"


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: bytes


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]

    def metadata(self, key: str) -> Any:
        """One observation-metadata value, decoded."""
        return json.loads(self.attributes[METADATA + key])


@dataclass
class OTLPReceiver:
    """An OTLP/HTTP trace receiver answering as Langfuse's endpoint does; everything it is sent is kept."""

    url: str = ""
    requests: list[ReceivedRequest] = field(default_factory=list)

    def spans(self, since: int = 0) -> list[ReceivedSpan]:
        """The spans in the trace exports received, from the ``since``-th request on."""
        spans = []
        for request in self.requests[since:]:
            if request.path != TRACES_PATH:
                continue
            export = ExportTraceServiceRequest.FromString(request.body)
            for resource_spans in export.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                attributes={a.key: attribute_value(a.value) for a in span.attributes},
                            )
                        )
        return spans


def attribute_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
def otlp_receiver():
    receiver = OTLPReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            self._record(body)
            if self.path == TRACES_PATH:
                self._answer(200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString())
            else:
                self._answer(404, "application/json", b'{"message": "not served by the test receiver"}')

        def do_GET(self) -> None:
            self._record(b"")
            self._answer(404, "application/json", b'{"message": "not served by the test receiver"}')

        def _record(self, body: bytes) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            receiver.requests.append(ReceivedRequest(self.path, headers, body))

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def langfuse_credentials(otlp_receiver, monkeypatch):
    """Langfuse configured from the environment, as a user would, aimed at the receiver; a fresh client.

    ``get_client()`` (which the handler calls) returns the process's single cached client, so the
    cache is emptied first; the client gets its own TracerProvider, leaving the global one alone.
    """
    from langfuse import Langfuse
    from langfuse._client.resource_manager import LangfuseResourceManager
    from opentelemetry.sdk.trace import TracerProvider

    public_key, secret_key = f"pk-lf-test-{uuid.uuid4().hex[:8]}", "sk-lf-test"
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", secret_key)
    monkeypatch.setenv("LANGFUSE_BASE_URL", otlp_receiver.url)
    for setting in ("LANGFUSE_HOST", "LANGFUSE_TRACING_ENABLED", "LANGFUSE_SAMPLE_RATE",
                    "LANGFUSE_OTEL_TRACES_EXPORT_PATH", "OTEL_SDK_DISABLED"):  # fmt: skip
        monkeypatch.delenv(setting, raising=False)
    # A proxy configured for the developer's machine must not carry the export to 127.0.0.1.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    LangfuseResourceManager.reset()
    tracer_provider = TracerProvider()
    Langfuse(tracer_provider=tracer_provider)
    yield public_key, secret_key
    LangfuseResourceManager.reset()
    tracer_provider.shutdown()


@pytest.fixture(scope="module")
def support_graph(tmp_path_factory, embedded_slm):
    from agentgraph.graphs.customer_support import build_customer_support_graph

    return build_customer_support_graph(data_dir=tmp_path_factory.mktemp("traced-support"), slm=embedded_slm)


def traced_turn(
    graph, receiver: OTLPReceiver, message: str, *, thread_id: str, customer_id: str
) -> tuple[TurnResult, dict[str, ReceivedSpan]]:
    """One turn with the Langfuse handler, flushed as ``agentgraph run --trace`` flushes it, and its spans."""
    from langfuse import get_client

    received_before = len(receiver.requests)
    turn = run_turn(
        graph, message, thread_id=thread_id, inputs={"customer_id": customer_id}, callbacks=[DecisionTracingHandler()],
        metadata=trace_metadata(session_id=thread_id, user_id=customer_id),
    )  # fmt: skip
    get_client().flush()
    return turn, spans_by_name(receiver.spans(since=received_before))


def spans_by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    """One turn's spans by name, after checking they form one trace and no name repeats."""
    assert len({span.trace_id for span in spans}) == 1, "one turn is one trace"
    names = [span.name for span in spans]
    assert len(names) == len(set(names)), f"a name appears twice: {names}"
    return {span.name: span for span in spans}


DECISION_KEYS = ("decision_kind", "strategy", "escalated", "idempotency_keys")


def decision_keys(span: ReceivedSpan) -> set[str]:
    """Which decision-metadata keys the span carries."""
    return {key for key in DECISION_KEYS if METADATA + key in span.attributes}


def test_command_router_annotates_its_node_span_and_never_the_graph_span(otlp_receiver, langfuse_credentials):
    """Fast (rules only): a router returning ``Command(goto=...)`` gets its decision on its span; the graph's
    span, whose output is the whole thread's state, carries no decision, not even on a later turn."""
    router = create_router(RuleStrategy({r"\border\b": "track_order"}), routes={"track_order": "lookup"})
    builder = StateGraph(RouterState)
    builder.add_node("router", router, destinations=("lookup", "escalate"))
    builder.add_node("lookup", lambda state: {})
    builder.add_node("escalate", create_escalation_node(None))
    builder.add_edge(START, "router").add_edge("lookup", END).add_edge("escalate", END)
    graph = builder.compile(checkpointer=InMemorySaver(), name="rules-graph")
    thread_id = f"trace-rules-{uuid.uuid4().hex[:8]}"

    first, first_spans = traced_turn(graph, otlp_receiver, "Where is my order?", thread_id=thread_id, customer_id="C7")
    second, second_spans = traced_turn(graph, otlp_receiver, "Tell me a joke", thread_id=thread_id, customer_id="C7")

    assert (first.route, second.route) == ("lookup", "escalate")
    assert first_spans["router"].metadata("route") == "lookup"
    assert first_spans["router"].metadata("strategy") == "rules"
    assert first_spans["router"].metadata("confidence") == 1.0
    assert second_spans["router"].metadata("route") == "escalate"
    assert second_spans["router"].metadata("escalated") is True
    assert second_spans["escalate"].metadata("outcome") == "handoff"
    assert decision_keys(first_spans["rules-graph"]) == decision_keys(second_spans["rules-graph"]) == set()
    assert decision_keys(first_spans["lookup"]) == set()
    assert first_spans["rules-graph"].attributes[SESSION_ID] == thread_id
    assert first_spans["rules-graph"].attributes[USER_ID] == "C7"


@pytest.mark.slow
def test_action_turn_exports_node_spans_with_decision_metadata(support_graph, otlp_receiver, langfuse_credentials):
    public_key, secret_key = langfuse_credentials
    thread_id = f"trace-action-{uuid.uuid4().hex[:8]}"

    turn, spans = traced_turn(
        support_graph, otlp_receiver, "I want to cancel order 48213", thread_id=thread_id, customer_id="C1001"
    )

    assert turn.route == "action" and turn.intent == "cancel_order"
    assert "is cancelled" in turn.response
    assert {request.path for request in otlp_receiver.requests} == {TRACES_PATH}
    expected_auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    assert all(request.headers["authorization"] == expected_auth for request in otlp_receiver.requests)

    graph_nodes = ["router", "extract", "plan_tool_call", "guarded_tools", "answer", "validate", "deliver"]
    # The consequence classification runs as a LangGraph task inside guarded_tools, so it streams as a step too.
    assert turn.nodes == [*graph_nodes[:3], "guarded_tools:classify", *graph_nodes[3:]]
    root = spans["customer-support"]
    assert root.parent_span_id == ""
    assert all(spans[node].parent_span_id == root.span_id for node in graph_nodes)
    assert spans["guarded_tools:classify"].parent_span_id == spans["guarded_tools"].span_id
    assert spans["cancel_order"].parent_span_id == spans["guarded_tools"].span_id

    router = spans["router"]
    assert router.metadata("route") == "action"
    assert router.metadata("intent") == "cancel_order"
    assert router.metadata("strategy") == "classifier"
    assert router.metadata("confidence") == pytest.approx(turn.confidence)
    assert router.metadata("escalated") is False
    assert router.metadata("decision_kind") == "route"

    [tool_decision] = [d for d in turn.decisions if d.node == "guarded_tools"]
    guarded = spans["guarded_tools"]
    assert guarded.metadata("idempotency_keys") == [tool_decision.metadata["idempotency_key"]]
    assert guarded.metadata("strategy") == "policy"
    assert guarded.metadata("outcome") == "executed"
    assert decision_keys(root) == set()

    for span in spans.values():
        assert span.attributes[SESSION_ID] == thread_id, span.name
        assert span.attributes[USER_ID] == "C1001", span.name


@pytest.mark.slow
def test_escalation_turn_span_shows_escalated(support_graph, otlp_receiver, langfuse_credentials):
    thread_id = f"trace-escalate-{uuid.uuid4().hex[:8]}"

    turn, spans = traced_turn(
        support_graph, otlp_receiver, "I want to talk to a human agent", thread_id=thread_id, customer_id="C2002"
    )

    assert turn.route == "escalate"
    assert turn.nodes == ["router", "escalate", "answer", "validate", "deliver"]
    assert {"customer-support", *turn.nodes} <= set(spans)
    assert spans["router"].metadata("route") == "escalate"
    assert spans["router"].metadata("intent") == "contact_human_agent"

    escalate = spans["escalate"]
    assert escalate.metadata("escalated") is True
    assert escalate.metadata("strategy") == "human"
    assert escalate.metadata("outcome") == "handoff"
    assert METADATA + "idempotency_keys" not in escalate.attributes
    assert spans["customer-support"].attributes[SESSION_ID] == thread_id
    assert spans["customer-support"].attributes[USER_ID] == "C2002"
