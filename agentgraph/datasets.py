"""The Bitext customer-support data (CDLA-Sharing-1.0) that trains, tests and benchmarks the example.

The file is read where it lies (``$AGENTGRAPH_CUSTOMER_SUPPORT_CSV``, else
``../shared/data/bitext-customer-support/train.csv`` beside the repository); it
is never copied into the project.

Example:
    >>> from agentgraph.datasets import load_customer_support, split_customer_support
    >>> rows = load_customer_support()
    >>> len(rows), len({r.intent for r in rows})
    (4514, 27)
    >>> splits = split_customer_support(rows)
    >>> sorted(splits), len(splits["test"]) > 1900
    (['dev', 'test', 'train'], True)
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentgraph.errors import AgentGraphError, DatasetError

_DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/bitext-customer-support/train.csv"
SPLIT_FRACTIONS = {"train": 0.45, "dev": 0.10, "test": 0.45}
SPLIT_SEED = 20261123


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


def read_records(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file, or the objects of a JSONL file (by its ``.jsonl`` suffix)."""
    if not path.is_file():
        raise DatasetError(f"no data file at {path}")
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix != ".jsonl":
            return list(csv.DictReader(handle))
        records = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}, line {number}: not JSON ({exc}); write one object per line") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}, line {number}: a JSON object per line is needed, not {type(record).__name__}")
            records.append(record)
        return records
