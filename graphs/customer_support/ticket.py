"""What the schema enforcer extracts from a customer-support request.

:class:`SupportTicket` holds the identifiers an agent acts on: the order, the
invoice and the amount to refund. The JSON schema (and so the decoding
grammar) bounds their shape; the validators add what a grammar cannot say: a
value must occur in the message. Inside the schema enforcer a hallucinated id
therefore fails validation and is repaired or escalated instead of acted on.

Numbers are matched as the data treats them: leading zeros do not make a
different id (``00123842`` is order ``123842``), and a validated id is given
back exactly as the message writes it.

Example:
    >>> from agentgraph.graphs.customer_support.ticket import SupportTicket
    >>> SupportTicket.model_validate({"order_id": "123842"}, context={"source_text": "cancel order 00123842"}).order_id
    '00123842'
    >>> from pydantic import ValidationError
    >>> try:
    ...     SupportTicket.model_validate({"order_id": "999999"}, context={"source_text": "cancel order 00123842"})
    ... except ValidationError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, '999999' does not occur in the message; copy it from the message or use null
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from agentgraph.nodes.schema_enforcer import source_text_of

_ORDER_RUN = re.compile(r"(?<![\w#])\d+(?!\w)")
_INVOICE_RUN = re.compile(r"(?<!\w)#?\d+(?!\w)")
_AMOUNT = re.compile(r"(?<![\w.])\d+(?:[.,]\d{1,2})?(?![\d])")


def _as_written(value: str, source: str, runs: re.Pattern[str]) -> str:
    """The number in ``source`` that ``value`` names (ignoring '#' and leading zeros), as written there."""
    key = value.lstrip("#").lstrip("0")
    for run in runs.findall(source):
        if run.lstrip("#").lstrip("0") == key:
            return run
    raise ValueError(f"{value!r} does not occur in the message; copy it from the message or use null")


class SupportTicket(BaseModel):
    """Identifiers in a customer-support request; null where the request has none."""

    order_id: str | None = Field(
        default=None, pattern=r"^\d{4,20}$", description="the order or purchase number, digits only, if one is given"
    )
    invoice_id: str | None = Field(
        default=None, pattern=r"^#?\d{3,12}$", description="the invoice or bill number, e.g. #12345, if one is given"
    )
    refund_amount: float | None = Field(
        default=None, ge=0, le=1_000_000, description="the amount of money to refund, if one is given"
    )

    @field_validator("order_id")
    @classmethod
    def _order_id_in_message(cls, value: str | None, info: ValidationInfo) -> str | None:
        source = source_text_of(info)
        return value if value is None or source is None else _as_written(value, source, _ORDER_RUN)

    @field_validator("invoice_id")
    @classmethod
    def _invoice_id_in_message(cls, value: str | None, info: ValidationInfo) -> str | None:
        order_id = info.data.get("order_id")
        if value is not None and order_id is not None and value.lstrip("#").lstrip("0") == order_id.lstrip("0"):
            raise ValueError(f"{value!r} is the order number; an invoice number is a different one, or null")
        source = source_text_of(info)
        return value if value is None or source is None else _as_written(value, source, _INVOICE_RUN)

    @field_validator("refund_amount")
    @classmethod
    def _amount_in_message(cls, value: float | None, info: ValidationInfo) -> float | None:
        source = source_text_of(info)
        if value is None or source is None:
            return value
        identifiers = (info.data.get("order_id"), info.data.get("invoice_id"))
        if any(i is not None and value == float(i.lstrip("#")) for i in identifiers):
            raise ValueError(f"{value:g} is the order or invoice number, not an amount of money; use null")
        if any(float(number.replace(",", ".")) == value for number in _AMOUNT.findall(source)):
            return value
        raise ValueError(f"{value:g} does not occur in the message; copy the amount from the message or use null")
