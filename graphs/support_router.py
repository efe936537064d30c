"""The example's router: its intents, how its classifier is trained, and how it treats what customers send.

Real customer messages are short, misspelled, code-mixed and often not
requests at all. The classifier (:func:`train_support_router`) therefore
learns from more than the Bitext requests: phrasings written for this project
in the way customers type (``graphs/data/router_phrasings.jsonl``: fragments,
typos, chat abbreviations, Hinglish and other code-mixing), perturbed variants
of the Bitext requests (:func:`agentgraph.perturb.realistic`), and
out-of-scope messages as a class of their own (``graphs/data/out_of_scope.jsonl``:
product and stock questions, other domains, greetings, gibberish, bare ids).
Its temperature, gate and out-of-scope thresholds are fitted on the
cross-fitted scores of those realistic sources, not on the clean Bitext ones.
Nothing here comes from public intent or dialogue data sets.

The library's rule (:mod:`agentgraph.write_safety`) is configured for the
shop: the action intents write (:data:`WRITE_POLICY`); a reference is an
order number, and a bare one offers tracking, changing or cancelling the
order (:data:`CLARIFICATION_POLICY`); and the act detector
(:func:`support_act_detector`) is trained on the example's own labelled
messages (``graphs/data/message_acts.jsonl``) with a balanced sample of requests.

Example:
    >>> from agentgraph.graphs.support_router import CLARIFICATION_POLICY
    >>> CLARIFICATION_POLICY.choose(CLARIFICATION_POLICY.reference_candidates, request="order no 55102").question
    'What would you like me to do with order 55102: track it, change it or cancel it?'
    >>> CLARIFICATION_POLICY.confirm("cancel_order", request="cancel 48213").question
    'Shall I cancel order 48213?'
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentgraph.acts import ActDetector
from agentgraph.classifier import OUT_OF_SCOPE, IntentClassifier, SentenceEncoder, cached_classifier
from agentgraph.clarification import ClarificationPolicy, ReferencePattern
from agentgraph.datasets import customer_support_csv, load_customer_support, read_records, split_customer_support
from agentgraph.perturb import realistic
from agentgraph.slm.models import cache_dir
from agentgraph.write_safety import WritePolicy

if TYPE_CHECKING:
    from agentgraph.nodes.router import Router

logger = logging.getLogger(__name__)

CUSTOMER_SUPPORT_INTENTS: dict[str, str] = {
    "cancel_order": "stop or cancel an order already placed",
    "change_order": "modify items or quantities of an existing order",
    "change_shipping_address": "change the delivery address of an order or the account",
    "check_cancellation_fee": "ask what fee or penalty a cancellation costs",
    "check_invoice": "look at or review an existing invoice or bill",
    "check_payment_methods": "ask which payment methods are accepted",
    "check_refund_policy": "ask when or under which rules money is refunded",
    "complaint": "file a complaint or express dissatisfaction",
    "contact_customer_service": "ask how to reach customer service or its hours",
    "contact_human_agent": "ask to talk to a live person or human agent",
    "create_account": "open or sign up for a new account",
    "delete_account": "close or delete an account",
    "delivery_options": "ask about shipping methods, carriers or countries delivered to",
    "delivery_period": "ask how long delivery takes or when a parcel arrives",
    "edit_account": "update personal details of an account",
    "get_invoice": "obtain or download a copy of an invoice",
    "get_refund": "request money back",
    "newsletter_subscription": "subscribe to or unsubscribe from the newsletter",
    "payment_issue": "report a problem with a payment",
    "place_order": "buy something or place a new order",
    "recover_password": "reset or recover a forgotten password",
    "registration_problems": "report problems signing up or registering",
    "review": "leave a review or feedback about a product or service",
    "set_up_shipping_address": "add or set up a new shipping address",
    "switch_account": "change to another account type or plan",
    "track_order": "ask where an order is or its status",
    "track_refund": "ask about the status of a refund already requested",
}
"""The 27 Bitext intents with their decision boundaries (used by SLM routing)."""



AUGMENT_SEED = 20261202
AUGMENTED_COPIES = 1
"""Perturbed variants of each Bitext training request (:func:`agentgraph.perturb.realistic`)."""
REALISTIC_SOURCES = ("phrasings", "augmented", "out_of_scope")
"""The training sources most like live traffic: the gate and the out-of-scope thresholds are fitted on them."""
ROUTER_SETTINGS: dict[str, Any] = {
    "lexical_weight": 1.0,
    "target_selective_accuracy": 0.97,
    "max_gate_rejection": 0.5,
}
"""The classifier's settings: character n-grams at full weight (they read misspelt and code-mixed words), a gate
that keeps 97% of the accepted realistic requests right."""

Route = Literal["lookup", "action", "knowledge", "escalate"]

ROUTES: dict[str, Route] = {
    **dict.fromkeys(["track_order", "track_refund", "check_invoice", "get_invoice", "delivery_period"], "lookup"),
    **dict.fromkeys(["cancel_order", "change_order", "change_shipping_address", "get_refund", "delete_account"], "action"),
    **dict.fromkeys(
        ["check_refund_policy", "check_payment_methods", "delivery_options", "check_cancellation_fee",
         "place_order", "payment_issue", "create_account", "edit_account", "switch_account", "recover_password",
         "registration_problems", "newsletter_subscription", "set_up_shipping_address", "review",
         "contact_customer_service"],
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

def router_training_rows(
    exclude_intents: Sequence[str] = (), *, copies: int = AUGMENTED_COPIES
) -> list[tuple[str, str, int, str]]:
    """``(text, label, group, source)`` rows the router learns from (train and dev splits; the test split stays out).

    Each Bitext request comes with ``copies`` perturbed variants, in its group,
    so cross-fitting holds them out together.
    """
    excluded = set(exclude_intents)
    splits = split_customer_support(load_customer_support())
    rng = random.Random(AUGMENT_SEED)
    rows: list[tuple[str, str, int, str]] = []
    for group, request in enumerate(r for r in splits["train"] + splits["dev"] if r.intent not in excluded):
        rows.append((request.text, request.intent, group, "bitext"))
        rows += [(realistic(request.text, rng), request.intent, group, "augmented") for _ in range(copies)]
    extra = [(r["text"], r["label"], "phrasings") for r in read_records(example_data("router_phrasings"))]
    extra += [(r["text"], OUT_OF_SCOPE, "out_of_scope") for r in read_records(example_data("out_of_scope"))]
    start = len(rows)
    rows += [(text, label, start + i, source) for i, (text, label, source) in enumerate(extra) if label not in excluded]
    return rows


def train_support_router(
    *, encoder: SentenceEncoder | None = None, exclude_intents: Sequence[str] = ()
) -> IntentClassifier:
    """Train the example's classifier (optionally without some intents, to study out-of-scope detection)."""
    texts, labels, groups, sources = zip(*router_training_rows(exclude_intents), strict=True)
    return IntentClassifier.train(
        texts, labels, groups=groups, sources=sources, fit_sources=REALISTIC_SOURCES, encoder=encoder,
        descriptions={k: v for k, v in CUSTOMER_SUPPORT_INTENTS.items() if k not in set(exclude_intents)},
        **ROUTER_SETTINGS,
    )  # fmt: skip


def support_router_path(*, rebuild: bool = False) -> Path:
    """The classifier the example graph routes with, trained on first use (about two minutes on two cores).

    Kept in ``cache_dir()/artifacts/router/customer-support`` and retrained when
    its data, its recipe, the format or the encoder changed.
    """
    recipe = json.dumps([AUGMENT_SEED, AUGMENTED_COPIES, REALISTIC_SOURCES, ROUTER_SETTINGS])
    sha256 = _data_sha256(f"router:{recipe}", "router_phrasings", "out_of_scope")
    return cached_classifier(cache_dir() / "artifacts" / "router" / "customer-support", sha256, train_support_router,
                             rebuild=rebuild)  # fmt: skip


def _data_sha256(recipe: str, *example_files: str) -> str:
    """The digest of the Bitext file, the example's data files named and the training recipe."""
    digest = hashlib.sha256(recipe.encode())
    for path in (customer_support_csv(), *(example_data(name) for name in example_files)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


ACT_SAMPLE_SEED = 20261201
REQUESTS_PER_SOURCE = 150
"""Requests sampled from the Bitext train split and from the example's phrasings each: the act classes stay balanced."""


def example_data(name: str) -> Path:
    """A data file written for the example (``graphs/data/NAME.jsonl``)."""
    return Path(str(files("agentgraph.graphs").joinpath("data", f"{name}.jsonl")))


def act_training_rows() -> list[tuple[str, str]]:
    """``(text, act)`` pairs: the labelled messages, the social out-of-scope ones, and a sample of requests."""
    rows = [(r["text"], r["act"]) for r in read_records(example_data("message_acts"))]
    rows += [(r["text"], "social") for r in read_records(example_data("out_of_scope")) if r.get("kind") == "social"]
    rng = random.Random(ACT_SAMPLE_SEED)
    bitext = split_customer_support(load_customer_support())["train"]
    phrasings = read_records(example_data("router_phrasings"))
    rows += [(r.text, "request") for r in rng.sample(bitext, REQUESTS_PER_SOURCE)]
    rows += [(r["text"], "request") for r in rng.sample(phrasings, REQUESTS_PER_SOURCE)]
    return rows


def train_support_acts(*, encoder: SentenceEncoder | None = None) -> IntentClassifier:
    """Train the act classifier of :func:`support_act_detector` on :func:`act_training_rows`."""
    texts, acts = zip(*act_training_rows(), strict=True)
    return ActDetector.train(texts, acts, encoder=encoder).classifier


def support_act_detector_path(*, rebuild: bool = False) -> Path:
    """The example's act classifier, trained on first use (~20 s), kept in ``cache_dir()/artifacts/acts``."""
    sha256 = _data_sha256(f"acts-v1:{ACT_SAMPLE_SEED}:{REQUESTS_PER_SOURCE}", "message_acts", "out_of_scope",
                          "router_phrasings")  # fmt: skip
    return cached_classifier(cache_dir() / "artifacts" / "acts" / "customer-support", sha256, train_support_acts,
                             rebuild=rebuild)  # fmt: skip


def support_routing(classifier: IntentClassifier, acts: ActDetector | None) -> dict[str, Any]:
    """The example router's arguments (strategy, routes and policies) for ``create_router`` or ``Router``."""
    # Imported here: agentgraph.distill reads this module's intents, and the router module imports agentgraph.distill.
    from agentgraph.nodes.router import ClassifierStrategy

    return {
        "strategies": [ClassifierStrategy(classifier)], "routes": ROUTES, "acts": acts, "writes": WRITE_POLICY,
        "clarification": CLARIFICATION_POLICY,
    }  # fmt: skip


def support_router(classifier: IntentClassifier | None = None) -> Router:
    """The example graph's router without the graph: ``classifier`` (default: the example's), its act detector on
    the same encoder, the write rule and the clarifying questions (for evaluations and benchmarks)."""
    from agentgraph.nodes.router import Router

    classifier = classifier if classifier is not None else IntentClassifier.load(support_router_path())
    return Router(**support_routing(classifier, support_act_detector(classifier.encoder)))


def support_act_detector(encoder: SentenceEncoder | None = None) -> ActDetector:
    """The example's act detector, on ``encoder`` (share the router's: the embedding is then computed once)."""
    return ActDetector.load(support_act_detector_path(), encoder=encoder)
