"""The Bitext customer-support data (CDLA-Sharing-1.0) that trains, tests and benchmarks the example, and its intents.

The file is read where it lies (``$AGENTGRAPH_CUSTOMER_SUPPORT_CSV``, else
``../shared/data/bitext-customer-support/train.csv`` beside the repository); it
is never copied into the project. :data:`CUSTOMER_SUPPORT_INTENTS` holds its 27
intents with their decision boundaries, as an SLM router is shown them.

Example:
    >>> from agentgraph.graphs.customer_support.bitext import (
    ...     CUSTOMER_SUPPORT_INTENTS, load_customer_support, split_customer_support)
    >>> rows = load_customer_support()
    >>> len(rows), {r.intent for r in rows} == set(CUSTOMER_SUPPORT_INTENTS)
    (4514, True)
    >>> splits = split_customer_support(rows)
    >>> sorted(splits), len(splits["test"]) > 1900
    (['dev', 'test', 'train'], True)
"""

from __future__ import annotations

import csv
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from agentgraph.errors import AgentGraphError

_DEFAULT_CSV = Path(__file__).resolve().parents[3] / "shared/data/bitext-customer-support/train.csv"
SPLIT_FRACTIONS = {"train": 0.45, "dev": 0.10, "test": 0.45}
SPLIT_SEED = 20261123

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


class SupportRequest(BaseModel):
    """One labelled request; ``entity_type``/``entity_value`` hold its one entity span, if any."""

    text: str
    intent: str
    category: str
    entity_type: str | None = None
    entity_value: str | None = None
    response: str


def customer_support_csv() -> Path:
    path = Path(os.environ.get("AGENTGRAPH_CUSTOMER_SUPPORT_CSV") or _DEFAULT_CSV)
    if not path.is_file():
        raise AgentGraphError(
            f"customer-support data not found at {path}; set AGENTGRAPH_CUSTOMER_SUPPORT_CSV to the Bitext train.csv"
        )
    return path


def load_customer_support(path: str | Path | None = None) -> list[SupportRequest]:
    with open(path or customer_support_csv(), newline="", encoding="utf-8") as handle:
        return [
            SupportRequest(
                text=row["instruction"],
                intent=row["intent"],
                category=row["category"],
                entity_type=row["entity_type"] or None,
                entity_value=row["entity_value"] or None,
                response=row["response"],
            )
            for row in csv.DictReader(handle)
        ]


def split_customer_support(
    rows: Sequence[SupportRequest], *, seed: int = SPLIT_SEED, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, list[SupportRequest]]:
    """Stratified train/dev/test split by intent, fixed by ``seed``; every benchmark uses this one."""
    by_intent: dict[str, list[SupportRequest]] = defaultdict(list)
    for row in rows:
        by_intent[row.intent].append(row)
    rng = random.Random(seed)
    splits: dict[str, list[SupportRequest]] = {name: [] for name in fractions}
    for intent in sorted(by_intent):
        group = by_intent[intent][:]
        rng.shuffle(group)
        start = 0
        for position, (name, fraction) in enumerate(fractions.items()):
            end = len(group) if position == len(fractions) - 1 else start + round(fraction * len(group))
            splits[name].extend(group[start:end])
            start = end
    return splits
