"""Where each request of the example goes: its path, the tool that serves it, and what a write needs first.

The router's intents (:data:`~agentgraph.graphs.customer_support.bitext.CUSTOMER_SUPPORT_INTENTS`)
map to four paths (:data:`ROUTES`), and the lookup and action intents to the
store's tools (:data:`TOOL_OF_INTENT`); a message that asks for several things
goes to the planning path (:data:`STEP_POLICY`). The library's rule
(:mod:`agentgraph.write_safety`) is configured for the shop: the action intents
write (:data:`WRITE_POLICY`); a reference is an order number, and a bare one
offers tracking, changing or cancelling the order (:data:`CLARIFICATION_POLICY`).
:func:`support_router` is the example graph's router without the graph.

Example:
    >>> from agentgraph.graphs.customer_support.routes import CLARIFICATION_POLICY, ROUTES, TOOL_OF_INTENT
    >>> ROUTES["cancel_order"], TOOL_OF_INTENT["cancel_order"]
    ('action', 'cancel_order')
    >>> CLARIFICATION_POLICY.choose(CLARIFICATION_POLICY.reference_candidates, request="order no 55102").question
    'What would you like me to do with order 55102: track it, change it or cancel it?'
    >>> CLARIFICATION_POLICY.confirm("cancel_order", request="cancel 48213").question
    'Shall I cancel order 48213?'
"""

from __future__ import annotations

from typing import Any, Literal

from agentgraph.acts import ActDetector
from agentgraph.clarification import ClarificationPolicy, ReferencePattern
from agentgraph.classifier import IntentClassifier
from agentgraph.graphs.customer_support.training import support_act_detector, support_router_path
from agentgraph.routing import ClassifierStrategy, Router, RoutingStrategy, StepPolicy
from agentgraph.write_safety import WritePolicy

Route = Literal["lookup", "action", "knowledge", "escalate"]

ROUTES: dict[str, Route] = {
    **dict.fromkeys(["track_order", "track_refund", "check_invoice", "get_invoice", "delivery_period"], "lookup"),
    **dict.fromkeys(
        ["cancel_order", "change_order", "change_shipping_address", "get_refund", "delete_account"], "action"
    ),
    **dict.fromkeys(
        [
            "check_refund_policy",
            "check_payment_methods",
            "delivery_options",
            "check_cancellation_fee",
            "place_order",
            "payment_issue",
            "create_account",
            "edit_account",
            "switch_account",
            "recover_password",
            "registration_problems",
            "newsletter_subscription",
            "set_up_shipping_address",
            "review",
            "contact_customer_service",
        ],
        "knowledge",
    ),  # fmt: skip
    **dict.fromkeys(["complaint", "contact_human_agent"], "escalate"),
}
"""Every one of the 27 Bitext intents, to the path that serves it."""

WRITE_POLICY = WritePolicy(labels=frozenset(intent for intent, route in ROUTES.items() if route == "action"))
"""The intents whose path writes to the store (the graph's ``action`` route) and what a write needs."""

_CURRENCY = r"(?i:eur|euros?|usd|dollars?|rs|inr|rupees?|gbp|pounds?)\b|[€$£₹]"
ORDER_REFERENCE = ReferencePattern(
    pattern=rf"(?<![\w#$€£₹.,])(?<![Rr]s )(?<![Rr]s\. )(?<!INR )(?<!inr )#?(\d{{4,20}})(?!\w)(?![.,]\d)(?!\s*(?:{_CURRENCY}))",
    name="order {}", default="your order",
    words=ReferencePattern.model_fields["words"].default | {"ord", "ordr", "oder", "odr", "purchase", "nr"},
)  # fmt: skip
"""An order number as the store writes them (4 to 20 digits, which is what the extractor accepts), never an
amount of money ("refund 9999999 EUR", "rs 1299"), and the words that introduce one, misspelt as customers do."""

ACTION_PHRASES: dict[str, str] = {
    "cancel_order": "cancel {it}",
    "change_order": "change {it}",
    "change_shipping_address": "change the delivery address of {it}",
    "check_cancellation_fee": "tell you the cancellation fee",
    "check_invoice": "look up the invoice of {it}",
    "check_payment_methods": "list the payment methods we accept",
    "check_refund_policy": "explain our refund policy",
    "complaint": "file a complaint",
    "contact_customer_service": "tell you how to reach customer service",
    "contact_human_agent": "connect you with a person",
    "create_account": "help you open an account",
    "delete_account": "delete your account",
    "delivery_options": "list our delivery options",
    "delivery_period": "tell you when {it} arrives",
    "edit_account": "update your account details",
    "get_invoice": "send you the invoice of {it}",
    "get_refund": "refund {it}",
    "newsletter_subscription": "change your newsletter subscription",
    "payment_issue": "look into a payment problem",
    "place_order": "help you place an order",
    "recover_password": "reset your password",
    "registration_problems": "help with a sign-up problem",
    "review": "take your review",
    "set_up_shipping_address": "add a shipping address",
    "switch_account": "change your account plan",
    "track_order": "track {it}",
    "track_refund": "check on the refund of {it}",
}
"""Each intent's action, as a clarifying question says it (``{it}``: the order)."""

CLARIFICATION_POLICY = ClarificationPolicy(
    actions=ACTION_PHRASES,
    reference=ORDER_REFERENCE,
    reference_candidates=["track_order", "change_order", "cancel_order"],
    greeting=(
        "Hello! I can track orders and refunds, send invoices, change or cancel orders, and answer questions "
        "about delivery, payments and your account. What can I do for you?"
    ),
)

TOOL_OF_INTENT: dict[str, str] = {
    "track_order": "get_order_status",
    "delivery_period": "get_order_status",
    "track_refund": "get_refund_status",
    "check_invoice": "get_invoice",
    "get_invoice": "get_invoice",
    "cancel_order": "cancel_order",
    "change_order": "request_order_change",
    "change_shipping_address": "request_address_change",
    "get_refund": "issue_refund",
    "delete_account": "delete_account",
}
"""The store's tool that serves each lookup and action intent."""
READ_TOOLS = ("get_order_status", "list_orders", "get_invoice", "get_refund_status")
"""The tools that only read: they run without the consequence modeler."""

ORDER_VERBS = {
    "get_order_status": "look up",
    "get_invoice": "find the invoice of",
    "get_refund_status": "check the refund of",
    "cancel_order": "cancel",
    "request_order_change": "change",
    "request_address_change": "send to a new address",
    "issue_refund": "refund",
}
"""The tools aimed at one order, and how the question that asks which order names their action."""


STEP_POLICY = StepPolicy(route="plan")
"""A message that asks for several things goes to the planning path (graphs/customer_support/planning.py)."""


def support_routing(strategy: RoutingStrategy, acts: ActDetector | None) -> dict[str, Any]:
    """The example router's arguments (``strategy``, routes and policies) for ``create_router`` or ``Router``."""
    return {
        "strategies": [strategy], "routes": ROUTES, "acts": acts, "writes": WRITE_POLICY,
        "clarification": CLARIFICATION_POLICY, "steps": STEP_POLICY,
    }  # fmt: skip


def support_router(classifier: IntentClassifier | None = None) -> Router:
    """The example graph's router without the graph: ``classifier`` (default: the example's), its act detector on
    the same encoder, the write rule and the clarifying questions (for evaluations and benchmarks)."""
    classifier = classifier if classifier is not None else IntentClassifier.load(support_router_path())
    return Router(**support_routing(ClassifierStrategy(classifier), support_act_detector(classifier.encoder)))
