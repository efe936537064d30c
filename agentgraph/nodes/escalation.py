"""The node a router escalates to: the LLM answers the request, or a person gets a ticket.

Example:
    >>> from agentgraph.nodes.escalation import create_escalation_node
    >>> node = create_escalation_node(None)  # no LLM configured: a person takes it
    >>> update = node({"text": "my parcel is lost", "escalation_reason": "below_gate"})
    >>> update["escalation"].kind, update["decisions"][0].outcome
    ('human_handoff', 'handoff')
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from agentgraph.llm import HumanHandoff, escalate
from agentgraph.nodes.kernel import ControlNode, NodeCall, NodeResult
from agentgraph.records.decisions import DecisionLog


def create_escalation_node(
    llm: BaseChatModel | None,
    *,
    input_key: str = "text",
    output_key: str = "escalation",
    system: str | None = None,
    decision_log: DecisionLog | None = None,
    name: str = "escalate",
) -> ControlNode:
    """The node a router escalates to: ``llm`` answers the request, or a person gets a ticket.

    Writes an ``AIMessage`` or a :class:`~agentgraph.llm.HumanHandoff` to
    ``output_key`` (a handoff when ``llm`` is None or fails) and one record.
    """

    def escalate_request(call: NodeCall) -> NodeResult:
        reason = f"router: {call.state.get('escalation_reason') or 'escalated'}"
        prompt = [("system", system), ("human", call.value)] if system else call.value
        result = escalate(llm, prompt, reason=reason)
        if isinstance(result, HumanHandoff):
            return NodeResult(
                {output_key: result}, output=result.model_dump(mode="json"), strategy="human", escalated=True,
                outcome="handoff", metadata={"reason": reason},
            )  # fmt: skip
        return NodeResult(
            {output_key: result}, output=result.content, strategy="llm", escalated=True, outcome="answered",
            model=(result.response_metadata or {}).get("model_name"), metadata={"reason": reason},
        )  # fmt: skip

    return ControlNode(
        escalate_request, name=name, kind="llm_call", input_key=input_key, what="request", decision_log=decision_log
    )
