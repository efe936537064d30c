"""The example's data for ``agentgraph distill``: the Bitext rows as examples, and the extraction role's schema.

The Bitext data stands in for a month of teacher traces
(``agentgraph distill dataset --customer-support``): for ``route`` the target
is the intent, for ``extract`` a :class:`SupportExtraction` (the intent plus
every entity field, null where the request has none). Its rows keep the split
:func:`~agentgraph.graphs.customer_support.bitext.split_customer_support` gives
them, so the test split is that split's test set, in its order, and benchmarks
stay comparable.

Example:
    >>> from agentgraph.graphs.customer_support.distillation import SupportExtraction, customer_support_examples
    >>> SupportExtraction(intent="track_order", order_id="12345").model_dump(exclude_none=True)
    {'intent': 'track_order', 'order_id': '12345'}
    >>> source = customer_support_examples(role="extract")
    >>> source.counts["rows"], source.examples[0].pinned_split, sorted(source.examples[0].target)[:2]
    (4514, 'train', ['account_type', 'delivery_city'])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentgraph.classifier import file_sha256
from agentgraph.distill.dataset import ROLE_STEP_TYPES, SPLITS, Example, Role, Source
from agentgraph.errors import DatasetError
from agentgraph.graphs.customer_support.bitext import (
    CUSTOMER_SUPPORT_INTENTS,
    customer_support_csv,
    load_customer_support,
    split_customer_support,
)

CUSTOMER_SUPPORT_SOURCE = "customer-support"
CUSTOMER_SUPPORT_ENTITY_FIELDS = (
    "account_type", "delivery_city", "delivery_country", "invoice_id", "order_id", "person_name", "refund_amount",
)  # fmt: skip
"""The Bitext entity types: every one is a field of :class:`SupportExtraction`."""

if TYPE_CHECKING:  # the Literal is built from the intent list at run time, which a type checker cannot follow
    SupportIntent = str
else:
    SupportIntent = Literal[tuple(CUSTOMER_SUPPORT_INTENTS)]


class SupportExtraction(BaseModel):
    """What the extraction role reads from a customer-support request: its intent and entity fields."""

    model_config = ConfigDict(extra="forbid")

    intent: SupportIntent = Field(description="one of the 27 customer-support intents")
    account_type: str | None = Field(default=None, description="the account type named, e.g. Premium")
    delivery_city: str | None = Field(default=None, description="the city a delivery is about")
    delivery_country: str | None = Field(default=None, description="the country a delivery is about")
    invoice_id: str | None = Field(default=None, description="the invoice number as written, e.g. #12588")
    order_id: str | None = Field(default=None, description="the order or purchase number")
    person_name: str | None = Field(default=None, description="the name of a person the request names")
    refund_amount: str | None = Field(default=None, description="the amount of money to refund, digits only")


def customer_support_examples(path: str | Path | None = None, *, role: Role) -> Source:
    """The Bitext customer-support rows as examples, each pinned to its :func:`split_customer_support` split.

    Examples come split by split (train, dev, test), each in that split's order.
    """
    path = Path(path) if path else customer_support_csv()
    rows = load_customer_support(path)
    row_numbers = {id(row): number for number, row in enumerate(rows, start=1)}
    step = ROLE_STEP_TYPES[role][0]
    examples = []
    splits = split_customer_support(rows)
    for split in SPLITS:
        for row in splits[split]:
            if role == "route":
                target: Any = row.intent
            else:
                if row.entity_type and row.entity_type not in CUSTOMER_SUPPORT_ENTITY_FIELDS:
                    raise DatasetError(
                        f"{path}: entity type {row.entity_type!r} is not a SupportExtraction field "
                        f"({', '.join(CUSTOMER_SUPPORT_ENTITY_FIELDS)}); is this the Bitext customer-support data?"
                    )
                entity = {row.entity_type: row.entity_value} if row.entity_type else {}
                target = SupportExtraction(intent=row.intent, **entity).model_dump()
            examples.append(
                Example(
                    id=f"{CUSTOMER_SUPPORT_SOURCE}/{row_numbers[id(row)]}", source=CUSTOMER_SUPPORT_SOURCE,
                    step_type=step, input=row.text, target=target, label=row.intent, pinned_split=split,
                )
            )  # fmt: skip
    counts = {"path": str(path), "sha256": file_sha256(path), "rows": len(rows)}
    counts |= {f"pinned_{split}": len(splits[split]) for split in SPLITS}
    return Source(name=CUSTOMER_SUPPORT_SOURCE, examples=examples, counts=counts)
