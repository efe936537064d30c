"""Curate a training set for one small-model role from accepted LLM calls and labelled files.

Two roles: ``route`` (the target is a label) and ``extract`` (the target is a
JSON object). Examples come from:

- the trace store (:mod:`agentgraph.records.traces`): calls of the role's step
  types whose outcome is *accepted*. Rejected and failed calls are dropped;
  calls without an outcome yet are dropped too, and counted, since nobody has
  vouched for them. The input is the request (:attr:`LLMCall.input_text
  <agentgraph.records.traces.LLMCall.input_text>`: the one the node recorded,
  else the last user message; a schema enforcer call whose prompt held context
  has none and is counted unusable), the target the call's
  tool-call arguments, its output parsed as a JSON object, or (route) its text;
  a route target given as an object is read from its ``label_field``.
- labelled CSV/JSONL files: a text column and a label column (for ``extract``
  a JSON object, or a JSON string in CSV).
- any other :class:`Source`, whose examples may come with a pinned split (kept
  as given): the example's Bitext data
  (:func:`agentgraph.graphs.customer_support.distillation.customer_support_examples`,
  ``agentgraph distill dataset --customer-support``) stands in for a month of
  teacher traces that way, its test split kept so that benchmarks stay comparable.

Then, each step counted in the manifest:

1. **PII scrub**: personal data (:mod:`agentgraph.pii`) is masked in inputs,
   targets and prompt messages.
2. **De-duplication** within a step type, first come first kept (pinned test
   examples first, and never dropped, so nothing in train or dev repeats one):
   an example goes when an earlier kept one has the same target and the same
   normalised text (:func:`normalised_text`) or an embedding (MiniLM, over the
   text with digits as a placeholder) at cosine ``dedup_threshold`` or more.
   Near-identical inputs with different targets are both kept and counted:
   they are the teacher's ambiguity, or label noise worth a look.
3. **Clusters**: inside each step type, k-means over the embeddings (k from
   ``clusters``, default ``round(sqrt(n / 2))`` capped at 32); clusters are
   numbered by size, largest first, and each example records its own.
4. **Splits**: examples without a pinned split are split train/dev/test by
   ``fractions``, stratified by step type and class with a fixed seed (a class
   too small for a dev or test share stays in train).
5. **Balance**: in train only (dev and test keep the real distribution), a
   class with fewer examples than the floor (``class_floor``; default half the
   median train class size of its step type) is oversampled to the floor by
   repeating its examples in a seeded order; copies carry ``oversampled: true``.

:func:`write_dataset` writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``
(one canonical JSON object per line) and ``manifest.json``: counts per step,
per class and per split, and a sha256 over the canonical JSON of each split's
examples and of all of them. The same inputs and seed give byte-identical files.

Example:
    >>> from agentgraph.distill.dataset import normalised_text, scrub_pii
    >>> normalised_text("Where is my ORDER 12345?!") == normalised_text("where is my order 678")
    True
    >>> scrub_pii({"text": "mail jo@example.com", "intent": "edit_account"})[0]
    {'text': 'mail [EMAIL]', 'intent': 'edit_account'}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field, model_validator

from agentgraph.classifier import canonical_text, file_sha256
from agentgraph.datasets import read_records
from agentgraph.errors import DatasetError
from agentgraph.idempotency import canonical_json
from agentgraph.pii import PIIMatch, redact_pii
from agentgraph.records.traces import LLMCall, SQLiteTraceStore
from agentgraph.text import clean_text

FORMAT_VERSION = 1
Role = Literal["route", "extract"]
ROLES: tuple[Role, ...] = ("route", "extract")
ROLE_STEP_TYPES: dict[str, tuple[str, ...]] = {"route": ("route",), "extract": ("extract",)}
"""The trace step types a role learns from by default."""
SplitName = Literal["train", "dev", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "dev", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
MAX_AUTO_CLUSTERS = 32
TEXT_COLUMNS = ("text", "input", "instruction", "request")
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {"route": ("label", "intent"), "extract": ("target", "label")}
DEFAULT_SEED = 20261123
"""Splits, clusters and oversampling: the seed of the example's Bitext split, so the benchmarks' figures compare."""


class Example(BaseModel):
    """One training example: an input, its target and where it came from."""

    id: str = Field(description="source/key: the trace call id, or the row number in the file")
    source: str
    step_type: str
    input: str
    target: Any = Field(description="route: the label; extract: a JSON object")
    label: str = Field(description="the class stratified and balanced on (see label_of)")
    messages: list[dict[str, Any]] | None = Field(default=None, description="the teacher's prompt, for traced calls")
    cluster: int | None = None
    oversampled: bool = False
    pinned_split: SplitName | None = Field(default=None, exclude=True, description="the split the source fixes")


class Source(BaseModel):
    """Examples read from one place, with what reading them counted (and dropped)."""

    name: str
    examples: list[Example]
    counts: dict[str, Any]


class DatasetConfig(BaseModel):
    """How a dataset is curated; recorded in its manifest."""

    role: Role
    step_types: list[str] | None = Field(default=None, description="default: the role's (ROLE_STEP_TYPES)")
    seed: int = DEFAULT_SEED
    fractions: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    dedup_threshold: float = Field(default=0.98, gt=0, le=1, description="cosine at which inputs are near-identical")
    clusters: int | None = Field(default=None, ge=1, description="k-means clusters per step type (default: automatic)")
    class_floor: int | None = Field(
        default=None, ge=0, description="train examples per class (default: half the median; 0: off)"
    )
    label_field: str = Field(default="intent", description="the key of a JSON target that holds its class")

    @model_validator(mode="after")
    def _complete(self) -> DatasetConfig:
        if self.step_types is None:
            self.step_types = list(ROLE_STEP_TYPES[self.role])
        if sorted(self.fractions) != sorted(SPLITS) or any(value < 0 for value in self.fractions.values()):
            raise ValueError(f"fractions needs non-negative train, dev and test shares; got {self.fractions}")
        if not math.isclose(sum(self.fractions.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"fractions must add up to 1; {self.fractions} add up to {sum(self.fractions.values())}")
        return self


class CuratedDataset(BaseModel):
    """The splits, in the order they are written, and the manifest describing them."""

    splits: dict[str, list[Example]]
    manifest: dict[str, Any]


class TextEncoder(Protocol):
    """What curation needs of an encoder: L2-normalised embeddings (``agentgraph.classifier.SentenceEncoder``)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


_NON_WORD = re.compile(r"[\W_]+")


def normalised_text(text: str) -> str:
    """``text`` as exact de-duplication compares it: case, punctuation, spacing and digits do not count."""
    return " ".join(_NON_WORD.sub(" ", canonical_text(clean_text(text)).casefold()).split())


def scrub_pii(value: Any) -> tuple[Any, list[PIIMatch]]:
    """``value`` (a string, or lists and dicts of them) with personal data masked, and what was masked."""
    if isinstance(value, str):
        return redact_pii(value)
    matches: list[PIIMatch] = []
    if isinstance(value, list):
        scrubbed = []
        for item in value:
            clean, found = scrub_pii(item)
            scrubbed.append(clean)
            matches += found
        return scrubbed, matches
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            cleaned[key], found = scrub_pii(item)
            matches += found
        return cleaned, matches
    return value, matches


def label_of(role: Role, target: Any, *, label_field: str = "intent") -> str:
    """The class of a target: a route's label; an extraction's ``label_field``, else which fields it fills.

    An extraction target without a class field is stratified on the fields it
    fills (``fields:invoice_id+order_id``, ``fields:none``): what a model must
    learn to find differs more between those groups than within them.
    """
    if role == "route":
        return str(target)
    if target.get(label_field) is not None:
        return str(target[label_field])
    filled = sorted(key for key, value in target.items() if value is not None)
    return "fields:" + ("+".join(filled) or "none")


def content_sha256(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON (sorted keys, no spaces): equal content, equal hash."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _call_target(call: LLMCall, role: Role, label_field: str) -> Any:
    """What a traced call answered, as a role's target; None when it holds no usable one."""
    structured: Any = call.tool_calls[0]["args"] if call.tool_calls else None
    text = (call.output or "").strip()
    if structured is None and text.startswith("{"):
        try:
            structured = json.loads(text)
        except json.JSONDecodeError:
            structured = None
    if role == "extract":
        return structured if isinstance(structured, dict) else None
    if isinstance(structured, dict):
        label = structured.get(label_field)
        return label.strip() if isinstance(label, str) and label.strip() else None
    return text or None


def trace_examples(
    store: SQLiteTraceStore, *, role: Role, step_types: Sequence[str] | None = None, label_field: str = "intent"
) -> Source:
    """The accepted calls of ``step_types`` (default: the role's) in ``store`` as examples; the rest counted."""
    wanted = set(step_types or ROLE_STEP_TYPES[role])
    counts = Counter({"calls": 0, "other_step_types": 0, "failed": 0, "rejected": 0, "no_outcome": 0, "unusable": 0})
    examples = []
    for call in store.calls():
        counts["calls"] += 1
        if call.step_type not in wanted:
            counts["other_step_types"] += 1
        elif call.error is not None:
            counts["failed"] += 1
        elif call.accepted is None:
            counts["no_outcome"] += 1
        elif not call.accepted:
            counts["rejected"] += 1
        else:
            text, target = call.input_text, _call_target(call, role, label_field)
            if not (text and text.strip()) or target is None:
                counts["unusable"] += 1
                continue
            examples.append(
                Example(
                    id=f"trace/{call.id}", source="traces", step_type=str(call.step_type), input=text, target=target,
                    label=label_of(role, target, label_field=label_field), messages=call.messages,
                )
            )  # fmt: skip
    counts["accepted"] = len(examples)
    return Source(name="traces", examples=examples, counts={"path": store.path, **counts})


def file_examples(
    path: str | Path,
    *,
    role: Role,
    text_column: str | None = None,
    label_column: str | None = None,
    step_type: str | None = None,
    label_field: str = "intent",
) -> Source:
    """Labelled rows of a CSV or JSONL file as examples of ``step_type`` (default: the role's first).

    Rows with an empty text or label are dropped and counted as ``unlabelled``.
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise DatasetError(f"{path} holds no rows")
    text_key = text_column or next((c for c in TEXT_COLUMNS if c in records[0]), None)
    label_key = label_column or next((c for c in LABEL_COLUMNS[role] if c in records[0]), None)
    if text_key not in records[0] or label_key not in records[0]:
        raise DatasetError(
            f"{path} needs a text column ({text_column or ' or '.join(TEXT_COLUMNS)}) and a label column "
            f"({label_column or ' or '.join(LABEL_COLUMNS[role])}); it has {sorted(records[0])}. "
            "Name them with --text-column and --label-column."
        )
    step = step_type or ROLE_STEP_TYPES[role][0]
    examples, unlabelled = [], 0
    for number, record in enumerate(records, start=1):
        text, value = record.get(text_key), record.get(label_key)
        if not isinstance(text, str) or not text.strip() or value is None or value == "":
            unlabelled += 1
            continue
        target = _file_target(value, role=role, where=f"{path}, row {number}")
        examples.append(
            Example(
                id=f"{path.name}/{number}", source=path.name, step_type=step, input=text, target=target,
                label=label_of(role, target, label_field=label_field),
            )
        )  # fmt: skip
    counts = {"path": str(path), "sha256": file_sha256(path), "rows": len(records), "unlabelled": unlabelled}
    return Source(name=path.name, examples=examples, counts=counts)


def _file_target(value: Any, *, role: Role, where: str) -> Any:
    if role == "route":
        return str(value).strip()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: an extraction target must be a JSON object ({exc})") from exc
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: an extraction target must be a JSON object, not {type(value).__name__}")
    return value


def build_dataset(
    sources: Sequence[Source], config: DatasetConfig, *, encoder: TextEncoder | None = None
) -> CuratedDataset:
    """Scrub, de-duplicate, cluster, split and balance the examples of ``sources`` (see the module docs).

    ``encoder`` defaults to :class:`~agentgraph.classifier.SentenceEncoder` (int8 MiniLM).
    """
    examples = [example for source in sources for example in source.examples]
    if not examples:
        raise DatasetError(
            "no examples: give a trace store with accepted calls of the role's step types (`agentgraph traces label` "
            "and `traces review` give calls their outcomes), a labelled file, "
            "or the customer-support data"
        )
    ids = Counter(example.id for example in examples)
    repeated = sorted(example_id for example_id, count in ids.items() if count > 1)
    if repeated:
        raise DatasetError(f"example ids {repeated[:3]} occur twice: import each file once, under distinct names")
    if encoder is None:
        from agentgraph.classifier import SentenceEncoder

        encoder = SentenceEncoder()
    steps: dict[str, Any] = {"collected": len(examples)}

    examples, steps["pii"] = _scrub(examples, config)
    examples, steps["deduplication"], embeddings = _deduplicate(examples, config, encoder)
    steps["step_types"] = dict(sorted(Counter(example.step_type for example in examples).items()))
    steps["clusters"] = _cluster(examples, embeddings, config)
    splits = _split(examples, config)
    splits["train"], steps["balance"] = _balance(splits["train"], config)

    rows = {split: [example.model_dump(mode="json") for example in splits[split]] for split in SPLITS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "role": config.role,
        "config": config.model_dump(mode="json"),
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "sources": {source.name: source.counts for source in sources},
        "steps": steps,
        "splits": {split: _split_summary(splits[split], rows[split]) for split in SPLITS},
        "sha256": content_sha256(rows),
    }
    return CuratedDataset(splits=splits, manifest=manifest)


def _scrub(examples: list[Example], config: DatasetConfig) -> tuple[list[Example], dict[str, Any]]:
    scrubbed: list[Example] = []
    kinds: Counter[str] = Counter()
    touched = 0
    for example in examples:
        (text, target), matches = scrub_pii([example.input, example.target])
        # The prompt repeats the input: its matches are masked but not counted again.
        messages, in_prompt = scrub_pii(example.messages)
        if matches or in_prompt:
            touched += 1
            kinds.update(match.kind for match in matches)
            example = example.model_copy(
                update={
                    "input": text, "target": target, "messages": messages,
                    "label": label_of(config.role, target, label_field=config.label_field),
                }
            )  # fmt: skip
        scrubbed.append(example)
    return scrubbed, {"examples": touched, "matches": dict(sorted(kinds.items()))}


def _priority(examples: Sequence[Example]) -> list[int]:
    """The order de-duplication keeps in: pinned test examples first (never dropped), then the rest as given."""
    return sorted(range(len(examples)), key=lambda i: examples[i].pinned_split != "test")


def _deduplicate(
    examples: list[Example], config: DatasetConfig, encoder: TextEncoder
) -> tuple[list[Example], dict[str, int], np.ndarray]:
    """Exact (normalised text) then near (embedding) duplicates out; returns the kept examples with their embeddings."""
    ordered = [examples[i] for i in _priority(examples)]
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for example in ordered:
        key = (example.step_type, normalised_text(example.input), canonical_json(example.target))
        if key not in seen or example.pinned_split == "test":
            seen.add(key)
            unique.append(example)
    embeddings = encoder.encode([canonical_text(example.input) for example in unique]).astype(np.float32)
    kept = np.zeros(len(unique), dtype=bool)
    other_target = 0
    for step_type in sorted({example.step_type for example in unique}):
        members = np.array([i for i, example in enumerate(unique) if example.step_type == step_type])
        targets = [canonical_json(unique[i].target) for i in members]
        index = {target: n for n, target in enumerate(dict.fromkeys(targets))}
        codes = np.array([index[target] for target in targets])
        protected = np.array([unique[i].pinned_split == "test" for i in members])
        keep, conflicts = near_duplicate_mask(embeddings[members], codes, protected, threshold=config.dedup_threshold)
        kept[members] = keep
        other_target += conflicts
    # Back to the order the sources gave, so splits are written in it.
    position = {example.id: n for n, example in enumerate(examples)}
    order = sorted(np.flatnonzero(kept), key=lambda i: position[unique[i].id])
    counts = {
        "exact_duplicates": len(ordered) - len(unique),
        "near_duplicates": int(len(unique) - kept.sum()),
        "near_identical_other_target": other_target,
        "kept": len(order),
    }
    return [unique[i] for i in order], counts, embeddings[order]


def near_duplicate_mask(
    embeddings: np.ndarray, targets: np.ndarray, protected: np.ndarray, *, threshold: float, block: int = 1024
) -> tuple[np.ndarray, int]:
    """Which rows to keep, first come first kept, and how many kept rows are near-identical to one with another target.

    A row is dropped when an earlier kept row has the same target code and a
    cosine of ``threshold`` or more; ``protected`` rows are always kept.
    Similarities are computed a block of rows at a time against the rows
    before them, so memory stays at ``block`` rows, not the full square.
    """
    keep = np.zeros(len(embeddings), dtype=bool)
    other_target = 0
    for start in range(0, len(embeddings), block):
        stop = min(start + block, len(embeddings))
        similarities = embeddings[start:stop] @ embeddings[:stop].T
        for row, i in enumerate(range(start, stop)):
            close = np.flatnonzero(similarities[row, :i] >= threshold)
            close = close[keep[close]]
            same = close[targets[close] == targets[i]]
            if protected[i] or not len(same):
                keep[i] = True
                other_target += bool(len(close) - len(same))
    return keep, other_target


def _cluster(examples: list[Example], embeddings: np.ndarray, config: DatasetConfig) -> dict[str, Any]:
    """k-means inside each step type; sets each example's ``cluster`` (0 = the largest) and returns the sizes."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    summary: dict[str, Any] = {}
    for step_type in sorted({example.step_type for example in examples}):
        members = [i for i, example in enumerate(examples) if example.step_type == step_type]
        k = min(config.clusters or min(MAX_AUTO_CLUSTERS, max(1, round(math.sqrt(len(members) / 2)))), len(members))
        # One thread: k-means sums partial centres per thread, and their order would change the low bits of
        # the centres, and now and then an assignment, from run to run.
        with threadpool_limits(limits=1):
            assignment = KMeans(n_clusters=k, n_init=3, random_state=config.seed).fit_predict(embeddings[members])
        sizes = Counter(assignment.tolist())
        first: dict[int, int] = {}
        for n, cluster in enumerate(assignment.tolist()):
            first.setdefault(cluster, n)
        renumber = {cluster: n for n, cluster in enumerate(sorted(sizes, key=lambda c: (-sizes[c], first[c])))}
        for i, cluster in zip(members, assignment.tolist(), strict=True):
            examples[i] = examples[i].model_copy(update={"cluster": renumber[cluster]})
        summary[step_type] = {"k": k, "sizes": sorted(sizes.values(), reverse=True)}
    return summary


def _split(examples: list[Example], config: DatasetConfig) -> dict[str, list[Example]]:
    """Pinned examples to their split; the rest stratified by step type and class, seeded. Source order kept."""
    assigned: dict[str, SplitName] = {e.id: e.pinned_split for e in examples if e.pinned_split is not None}
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for example in examples:
        if example.pinned_split is None:
            strata[(example.step_type, example.label)].append(example.id)
    rng = random.Random(config.seed)
    for stratum in sorted(strata):
        # Sorted first, so the split does not depend on the order the sources gave.
        members = sorted(strata[stratum])
        rng.shuffle(members)
        test = round(config.fractions["test"] * len(members))
        dev = round(config.fractions["dev"] * len(members))
        for n, example_id in enumerate(members):
            assigned[example_id] = "test" if n < test else "dev" if n < test + dev else "train"
    return {split: [e for e in examples if assigned[e.id] == split] for split in SPLITS}


def _balance(train: list[Example], config: DatasetConfig) -> tuple[list[Example], dict[str, Any]]:
    """Oversample train classes below the floor up to it; copies follow the originals."""
    by_class: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for example in train:
        by_class[(example.step_type, example.label)].append(example)
    floors: dict[str, int] = {}
    for step_type in sorted({step for step, _ in by_class}):
        sizes = [len(group) for (step, _), group in by_class.items() if step == step_type]
        floors[step_type] = (
            config.class_floor if config.class_floor is not None else math.ceil(float(np.median(sizes)) / 2)
        )
    rng = random.Random(config.seed)
    copies: list[Example] = []
    added: dict[str, dict[str, int]] = defaultdict(dict)
    for (step_type, label), group in sorted(by_class.items()):
        missing = floors[step_type] - len(group)
        if missing <= 0:
            continue
        order = sorted(group, key=lambda example: example.id)
        rng.shuffle(order)
        copies += [order[n % len(order)].model_copy(update={"oversampled": True}) for n in range(missing)]
        added[step_type][label] = missing
    summary = {"floor": floors, "oversampled": dict(added), "added": len(copies)}
    return train + copies, summary


def _split_summary(examples: Sequence[Example], rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    classes: dict[str, Counter] = defaultdict(Counter)
    for example in examples:
        classes[example.step_type][example.label] += 1
    return {
        "examples": len(examples),
        "oversampled": sum(example.oversampled for example in examples),
        "classes": {step: dict(sorted(counts.items())) for step, counts in sorted(classes.items())},
        "sha256": content_sha256(list(rows)),
    }


def write_dataset(dataset: CuratedDataset, out: str | Path) -> Path:
    """Write the splits as JSONL and ``manifest.json`` into ``out``; returns the manifest's path.

    Each file is written beside its final name and moved into place, so a
    reader never sees half a file; other files in ``out`` are left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = "".join(canonical_json(example.model_dump(mode="json")) + "\n" for example in dataset.splits[split])
        _write_atomic(out / f"{split}.jsonl", lines)
    manifest_path = out / "manifest.json"
    _write_atomic(manifest_path, json.dumps(dataset.manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest_path


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
