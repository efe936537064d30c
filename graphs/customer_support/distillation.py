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

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentgraph.classifier import file_sha256
from agentgraph.distill.dataset import ROLE_STEP_TYPES, SPLITS, Example, Role, Source
from agentgraph.errors import DatasetError
from agentgraph.graphs.customer_support.bitext import (
    CUSTOMER_SUPPORT_INTENTS,
    SupportRequest,
    customer_support_csv,
    load_customer_support,
    split_customer_support,
)
from agentgraph.graphs.customer_support.ticket import SupportTicket

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


def extraction_target(row: SupportRequest, *, where: str | Path) -> dict[str, Any]:
    """The :class:`SupportExtraction` a Bitext row labels (its intent, and its entity span as a field), as a dict.

    ``where`` names the data in the error raised for an entity type that is no field of it.
    """
    if row.entity_type and row.entity_type not in CUSTOMER_SUPPORT_ENTITY_FIELDS:
        raise DatasetError(
            f"{where}: entity type {row.entity_type!r} is not a SupportExtraction field "
            f"({', '.join(CUSTOMER_SUPPORT_ENTITY_FIELDS)}); is this the Bitext customer-support data?"
        )
    entity = {row.entity_type: row.entity_value} if row.entity_type else {}
    return SupportExtraction(intent=row.intent, **entity).model_dump()


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
                target = extraction_target(row, where=path)
            examples.append(
                Example(
                    id=f"{CUSTOMER_SUPPORT_SOURCE}/{row_numbers[id(row)]}", source=CUSTOMER_SUPPORT_SOURCE,
                    step_type=step, input=row.text, target=target, label=row.intent, pinned_split=split,
                )
            )  # fmt: skip
    counts = {"path": str(path), "sha256": file_sha256(path), "rows": len(rows)}
    counts |= {f"pinned_{split}": len(splits[split]) for split in SPLITS}
    return Source(name=CUSTOMER_SUPPORT_SOURCE, examples=examples, counts=counts)


SUPPORT_TICKET_SOURCE = "customer-support-ticket"
_NUMBER_RUN = re.compile(r"#?\d+")


def ticket_target(text: str, extraction: dict[str, Any]) -> dict[str, Any] | None:
    """What the example's ``extract`` node should fill for ``text``: a :class:`SupportTicket`, beside the intent.

    ``extraction`` is a :class:`SupportExtraction` target; the ticket keeps its order, invoice and amount,
    validated against the message as the node validates them. A Bitext span cut short (``3707955617``
    of ``370795561790``, ``3`` of ``350 dollars``) is completed to the one number in the message it
    begins. None: a value the message does not hold even then (``order732201349959``, which the
    ticket does not read as an order number), so no example teaches the model to write it.
    """
    fields = {name: extraction.get(name) for name in SupportTicket.model_fields if extraction.get(name) is not None}
    for name, value in fields.items():
        prefix = str(value).lstrip("#")
        runs = {run for run in _NUMBER_RUN.findall(text) if run.lstrip("#").startswith(prefix)}
        if len(runs) == 1:
            fields[name] = runs.pop()
    try:
        ticket = SupportTicket.model_validate(fields, context={"source_text": text})
    except ValidationError:
        return None
    return {"intent": extraction["intent"], **ticket.model_dump(exclude_none=True)}


def support_ticket_examples(path: str | Path | None = None) -> Source:
    """The Bitext rows as ``extract`` examples for the example graph's own node, which fills a :class:`SupportTicket`.

    Each target is :func:`ticket_target` of the row's :class:`SupportExtraction` (the intent stays in the
    target as the class a dataset stratifies on; the ticket leaves it out when it is trained and gated);
    a row whose entity the message does not hold is left out and counted.
    """
    source = customer_support_examples(path, role="extract")
    examples, dropped = [], 0
    for example in source.examples:
        target = ticket_target(example.input, example.target)
        if target is None:
            dropped += 1
            continue
        examples.append(example.model_copy(update={"target": target, "source": SUPPORT_TICKET_SOURCE}))
    return Source(
        name=SUPPORT_TICKET_SOURCE, examples=examples, counts=source.counts | {"dropped_entity_not_in_message": dropped}
    )
