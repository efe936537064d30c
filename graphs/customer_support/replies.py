"""What the example graph says: the reply of each path, from the tool's result, the policy kept or the escalation.

:func:`answer` drafts the reply (templates over the tools' JSON results and
errors, the policy section the pruner kept, the LLM's escalation or a
human-handoff ticket); the output validator checks it, among other things for
:data:`FORBIDDEN_IN_REPLIES`, and :func:`deliver` sends it, or a holding
message while a flagged draft waits for a person.

Example:
    >>> from langchain_core.messages import ToolMessage
    >>> from agentgraph.graphs.customer_support.replies import tool_reply
    >>> tool_reply(ToolMessage('{"order_id": "48213"}', tool_call_id="call_1", name="cancel_order"), "cancel_order")
    'Order 48213 is cancelled. The full amount goes back to your payment method within 5 business days.'
    >>> tool_reply(ToolMessage("Error: order 48213 has shipped", tool_call_id="call_2", name="cancel_order",
    ...                        status="error"), "cancel_order")
    'Sorry, I could not do that: order 48213 has shipped.'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import ToolMessage

from agentgraph.clarification import Clarification
from agentgraph.graphs.customer_support.routes import CLARIFICATION_POLICY, ORDER_VERBS, TOOL_OF_INTENT
from agentgraph.graphs.customer_support.state import CustomerSupportState, SupportReply
from agentgraph.llm import HumanHandoff

FORBIDDEN_IN_REPLIES = {
    "stack_trace": r"Traceback \(most recent call last\)",
    "sql": r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[^.]{0,80}\b(?:FROM|INTO|SET)\b",
    "internal_path": r"(?:/usr/|/home/|site-packages|\.py\b)",
}
"""What must never reach a customer: internals a failing tool or model could leak."""


def answer(state: CustomerSupportState) -> dict[str, Any]:
    """The reply, by path: the router's question, a template over the tool's result, the policy section kept,
    or the escalation. A reply that asks which order is kept as the thread's pending question."""
    route = state["route"]
    if route == CLARIFICATION_POLICY.route:
        return {"draft": SupportReply(text=state["clarification"].question)}
    if route == "escalate":
        result = state["escalation"]
        if isinstance(result, HumanHandoff):
            return {"draft": handoff_reply(result)}
        return {"draft": SupportReply(text=result.text)}
    if route == "knowledge":
        kept = state.get("context") or []
        if not kept:
            return {"draft": SupportReply(text="I could not find that in our policies; a colleague will follow up.")}
        return {"draft": SupportReply(text=kept[0].text)}
    if state.get("handoff") is not None:
        return {"draft": handoff_reply(state["handoff"])}
    message = state["messages"][-1]
    reply = SupportReply(text=tool_reply(message, state["intent"]))
    if message.name == "list_orders" and message.status != "error":
        which = Clarification(
            kind="reference", question=reply.text, candidates=[state["intent"]], request=state["request"],
            consent=state.get("write_consent") is not None,
        )  # fmt: skip
        return {"draft": reply, "clarification": which}
    return {"draft": reply}


def handoff_reply(handoff: HumanHandoff) -> SupportReply:
    return SupportReply(
        text=f"I have passed your request to a colleague, who will get back to you. Your ticket is {handoff.ticket_id}.",
        handoff_ticket=handoff.ticket_id,
    )


def tool_reply(message: ToolMessage, intent: str) -> str:
    """A customer-facing sentence from a tool's result (JSON) or its error."""
    if message.status == "error":
        return error_reply(message)
    result = json.loads(message.text)
    match message.name:
        case "get_order_status":
            return order_status_reply(result)
        case "list_orders":
            verb = ORDER_VERBS[TOOL_OF_INTENT[intent]]
            if not result:
                return "I could not find any orders on your account."
            listed = "; ".join(
                f"{o['id']} ({o['status']}, placed {o['placed_on']}, {o['total']:.2f} EUR)" for o in result
            )
            return f"Which order should I {verb}? Your recent orders: {listed}. Reply with its order number."
        case "get_invoice":
            return (f"Invoice #{result['id']} for order {result['order_id']} was issued on {result['issued_on']}: "
                    f"{result['amount']:.2f} EUR, {result['status']}. A PDF copy is under Account, Orders, Invoice.")  # fmt: skip
        case "get_refund_status":
            return (f"Your refund of {result['amount']:.2f} EUR for order {result['order_id']}, requested on "
                    f"{result['requested_on']}, is {result['status']}.")  # fmt: skip
        case "cancel_order":
            return (f"Order {result['order_id']} is cancelled. The full amount goes back to your payment method "
                    "within 5 business days.")  # fmt: skip
        case "request_order_change" | "request_address_change":
            what = "change its items" if result["kind"] == "order" else "enter the new delivery address"
            return f"Order {result['order_id']} is on hold, and we have e-mailed you a link to {what}."
        case "issue_refund":
            return (f"A refund of {result['amount']:.2f} EUR for order {result['order_id']} is approved. It reaches "
                    "your payment method within 5 business days.")  # fmt: skip
        case "delete_account":
            return "Your account is deleted. Invoices are kept for 10 years, as the law requires."
    raise ValueError(f"no reply template for tool {message.name!r}")


def order_status_reply(order: Mapping[str, Any]) -> str:
    where = {
        "processing": f"is being prepared and should arrive by {order['estimated_delivery']}",
        "shipped": f"has shipped with {order['carrier']} and should arrive by {order['estimated_delivery']}",
        "delivered": f"was delivered to {order['shipping_city']}",
        "cancelled": "was cancelled",
    }[order["status"]]
    return f"Order {order['id']} ({order['items']}) {where}."


def error_reply(message: ToolMessage) -> str:
    flags = message.response_metadata or {}
    if flags.get("error") == "rejected":
        return "Our team reviewed this request and did not approve it, so nothing was changed."
    if flags.get("error") == "not_requested":
        return "I have not changed anything, as your message did not ask me to. Tell me what you would like me to do."
    if flags.get("retry_blocked"):
        return (
            "I could not confirm that this went through, so I have not repeated it; a colleague will check. "
            "You do not need to ask again."
        )
    reason = message.text.removeprefix("Error: ").split("\n")[0]
    return f"Sorry, I could not do that: {reason}."


def deliver(state: CustomerSupportState) -> dict[str, Any]:
    """The validated reply, or, when validation flagged it, a holding message (the draft waits for a person)."""
    reply = state.get("reply")
    if reply is None:
        return {"response": "Thanks for your message. A colleague is reviewing the answer and will reply shortly."}
    return {"response": reply.text}
