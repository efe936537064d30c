"""Labelled data files: the rows of a CSV file or the objects of a JSONL file, with typed errors.

Example:
    >>> import pathlib, tempfile
    >>> from agentgraph.datasets import read_records
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labelled.jsonl"
    >>> _ = path.write_text('{"text": "where is my order?", "label": "track_order"}\\n\\n', encoding="utf-8")
    >>> read_records(path)
    [{'text': 'where is my order?', 'label': 'track_order'}]
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from agentgraph.errors import DatasetError


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
                raise DatasetError(
                    f"{path}, line {number}: a JSON object per line is needed, not {type(record).__name__}"
                )
            records.append(record)
        return records
