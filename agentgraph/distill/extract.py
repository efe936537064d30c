"""The extraction role: fine-tune and gate an SLM that fills a pydantic schema (``distill train --role extract``).

The artifact is made for the schema enforcer: each training prompt is
the one its :class:`~agentgraph.extraction.Extractor` sends the SLM (the request
fenced by :func:`~agentgraph.extraction.schema_enforcer_message`,
the messages of :meth:`SLM.structured <agentgraph.slm.SLM.structured>`, the
model's chat template). With ``describe_schema=False`` (the default) the JSON
schema is not written into the prompt: the model learns it, as a distilled
router learns its labels, and the grammar still enforces it; the prompt
shrinks from about 650 tokens to about 80. The target is the teacher's object
as compact JSON with the fields left at their default omitted (the grammar
allows it; validation restores them): a request without entities is about 8
tokens instead of 56. The learning curve reports teacher-forced exact match on
a dev subset: the share of examples whose every target token is the model's top
choice, which is exactly the share greedy decoding reproduces.

:func:`load_extraction_artifact` reads what an artifact fixes of the schema enforcer
(the model, the schema, the prompt version, whether the prompt states the schema),
for an :class:`~agentgraph.extraction.Extractor` or the node alike, and
:func:`gate_extractor` runs the extractor (student mode) over the held-out split,
reporting the schema-valid rate, exact match of the entity fields and of the
intent, and latency, for the artifact and the base model;
:func:`~agentgraph.distill.gate.promote` takes its report like the router's.

Example:
    >>> from typing import Literal
    >>> from pydantic import BaseModel
    >>> from agentgraph.distill.extract import compact_json, entity_fields
    >>> class Extraction(BaseModel):
    ...     intent: Literal["track_order", "get_refund"]
    ...     order_id: str | None = None
    ...     person_name: str | None = None
    >>> compact_json(Extraction, {"intent": "track_order", "order_id": "12345", "person_name": None})
    '{"intent":"track_order","order_id":"12345"}'
    >>> entity_fields(Extraction)
    ['order_id', 'person_name']
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from pydantic import BaseModel, Field

from agentgraph.distill.gate import DEFAULT_THRESHOLD, GateVerdict, promotion_decision
from agentgraph.distill.train import (
    MANIFEST,
    DistillError,
    DistillSettings,
    Encoded,
    TrainingJob,
    TrainResult,
    _prepare_output,
    _TokenizerSLM,
    fine_tune,
    load_artifact,
    read_manifest,
    stratified_rows,
)
from agentgraph.extraction import Extractor, schema_enforcer_message
from agentgraph.slm.base import SLM, structured_messages


def schema_path(schema: type[BaseModel]) -> str:
    return f"{schema.__module__}:{schema.__qualname__}"


def import_schema(path: str) -> type[BaseModel]:
    """The pydantic model at ``module:Class``."""
    module, _, name = path.partition(":")
    try:
        schema = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DistillError(f"cannot import the schema {path!r} ({exc}); give it as module:Class") from exc
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise DistillError(f"{path} is not a pydantic model")
    return schema


def compact_json(schema: type[BaseModel], target: Any) -> str:
    """``target`` validated by ``schema`` as compact JSON, fields in schema order, those at their default left out."""
    return schema.model_validate(target).model_dump_json(exclude_defaults=True)


def entity_fields(schema: type[BaseModel], label_field: str = "intent") -> list[str]:
    return [name for name in schema.model_fields if name != label_field]


def extraction_stratum(row: tuple[str, Any]) -> str:
    """What a sample of extraction rows is stratified on: the intent and which entity fields are set."""
    _, target = row
    present = sorted(name for name, value in target.items() if name != "intent" and value is not None)
    return f"{target.get('intent')}|{','.join(present)}"


class ExtractPromptEncoder:
    """Prompt and target ids as the schema enforcer prompts its SLM and the grammar lets the model answer."""

    def __init__(self, tokenizer: Any, schema: type[BaseModel], *, describe_schema: bool, prompt_version: int) -> None:
        self.slm = _TokenizerSLM(tokenizer)
        self.schema = schema
        self.describe_schema = describe_schema
        self.prompt_version = prompt_version

    def prompt_ids(self, text: str) -> list[int]:
        from agentgraph.text import require_text

        message = schema_enforcer_message(require_text(text, what="request"), prompt_version=self.prompt_version)
        messages = structured_messages(message, self.schema, describe_schema=self.describe_schema)
        return self.slm.tokenize_chat(messages, add_generation_prompt=True)

    def target_ids(self, target: Any) -> list[int]:
        probe = [{"role": "user", "content": "?"}]
        prefix = self.slm.tokenize_chat(probe, add_generation_prompt=True)
        full = self.slm.tokenize_chat([*probe, {"role": "assistant", "content": compact_json(self.schema, target)}],
                                      add_generation_prompt=False)  # fmt: skip
        return full[len(prefix) :]

    def encode(self, text: str, target: Any) -> Encoded:
        return Encoded(self.prompt_ids(text), self.target_ids(target))


def load_extract_rows(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, list[tuple[str, Any]]]]:
    """The manifest and ``(input, target object)`` rows per split of an extract-role dataset folder."""
    import json

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise DistillError(
            f"{folder} holds no dataset manifest; build one with "
            "`agentgraph distill dataset --role extract --customer-support --out DIR`"
        )
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("role") != "extract":
        raise DistillError(
            f"{folder} is a {manifest.get('role')!r} dataset; extraction needs one built with --role extract"
        )
    splits = {}
    for split in ("train", "dev", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise DistillError(f"{path} is missing; rebuild the dataset with `agentgraph distill dataset`")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = [(row["input"], row["target"]) for row in rows]
    if not splits["train"]:
        raise DistillError(f"{folder}/train.jsonl is empty: there is nothing to train on")
    return manifest, splits


def teacher_forced_exact(model: Any, rows: Sequence[Encoded]) -> float:
    """Share of ``rows`` whose every target token is the model's argmax given the tokens before it."""
    import torch

    was_training = model.training
    model.eval()
    hits = 0
    try:
        with torch.inference_mode():
            for row in rows:
                logits = model(input_ids=torch.tensor([row.input_ids]), logits_to_keep=len(row.target) + 1).logits[0]
                predicted = logits[:-1].argmax(-1).tolist()  # position t predicts token t + 1
                hits += predicted == row.target
    finally:
        model.train(was_training)
    return hits / len(rows)


def train_extractor_slm(
    dataset_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    schema: type[BaseModel],
    base: str | os.PathLike[str] | None = None,
    settings: DistillSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_step=None,
) -> TrainResult:
    """Fine-tune ``base`` to fill ``schema``, the pydantic model the dataset's targets are instances of."""
    from transformers import AutoTokenizer

    from agentgraph.prompting import load_prompt
    from agentgraph.slm.models import prepare_model_folder

    settings = settings or DistillSettings()
    output = _prepare_output(output_dir, resume=resume, overwrite=overwrite)
    manifest, splits = load_extract_rows(dataset_dir)
    base_folder = prepare_model_folder(base)
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    prompt = load_prompt("schema_enforcer")
    encoder = ExtractPromptEncoder(
        tokenizer, schema, describe_schema=settings.describe_schema, prompt_version=prompt.version
    )
    try:
        train = [encoder.encode(text, target) for text, target in splits["train"]]
    except ValueError as exc:
        raise DistillError(f"a train target does not fit {schema_path(schema)}: {exc}") from exc
    chosen = stratified_rows(splits["dev"], settings.eval_examples, label=extraction_stratum)
    eval_rows = [encoder.encode(text, target) for text, target in chosen]
    job = TrainingJob(
        role="extract", dataset_folder=Path(dataset_dir), dataset_sha256=manifest["sha256"], base_folder=base_folder,
        tokenizer=tokenizer, train=train, evaluate=(lambda model: teacher_forced_exact(model, eval_rows)) if eval_rows else None,
        manifest={
            "schema": schema_path(schema), "schema_json": schema.model_json_schema(),
            "schema_enforcer": {"prompt": prompt.id, "prompt_version": prompt.version, "describe_schema": settings.describe_schema},
        },
    )  # fmt: skip
    return fine_tune(job, output, settings, resume=resume, on_step=on_step)


class ExtractionArtifact(TypedDict):
    """What an extraction artifact fixes of the schema enforcer: keyword arguments for either.

    ``Extractor(**artifact)`` and ``create_schema_enforcer(**artifact, llm=...)`` prompt the
    model as it was trained.
    """

    slm: SLM
    schema: type[BaseModel]
    prompt_version: int
    describe_schema: bool


def load_extraction_artifact(model_dir: str | os.PathLike[str], slm: SLM | None = None) -> ExtractionArtifact:
    """The model, schema and prompt settings of an extraction artifact, from its manifest.

    ``slm``: the folder loaded elsewhere (through vLLM, say; default: embedded).
    """
    manifest, slm = load_artifact(model_dir, "extract", slm)
    trained = manifest.get("schema_enforcer")
    if trained is None:
        raise DistillError(
            f"{model_dir} predates schema-enforcer prompts in the manifest; retrain it with `agentgraph distill train`"
        )
    return ExtractionArtifact(slm=slm, schema=import_schema(manifest["schema"]),
                              prompt_version=trained["prompt_version"], describe_schema=trained["describe_schema"])  # fmt: skip


class ExtractionEvaluation(BaseModel):
    rows: int
    schema_valid: float = Field(description="share of requests the node turned into a valid instance (no handoff)")
    exact_match: float = Field(description="every field equal to the target")
    entity_exact_match: float = Field(description="every entity field (all but the intent) equal to the target")
    entity_exact_match_with_entity: float | None = Field(description="the same, over rows whose target has an entity")
    intent_accuracy: float | None = Field(description="None: the schema has no intent field")
    latency_ms_p50: float
    latency_ms_p95: float


def extracted(extractor: Extractor[Any], text: str) -> dict[str, Any] | None:
    """What ``extractor`` in student mode makes of ``text``: the object, or None after a handoff."""
    value = extractor.extract(text, mode="student")[0].value
    return None if value is None else value.model_dump()


def same_entities(got: dict[str, Any] | None, expected: dict[str, Any], fields: Sequence[str]) -> bool:
    """Whether an extracted object (None: none was made) has every entity field of ``expected``."""
    return got is not None and all(got[name] == expected[name] for name in fields)


def evaluate_extractor(extractor: Extractor[Any], rows: Sequence[tuple[str, Any]]) -> ExtractionEvaluation:
    """Run ``extractor`` in student mode on each request and compare its object with the target."""
    schema = extractor.schema
    fields = entity_fields(schema)
    valid, exact, entity, entity_rows, intent, latencies = 0, 0, 0, [], 0, []
    for text, target in rows:
        expected = schema.model_validate(target).model_dump()
        started = time.perf_counter()
        got = extracted(extractor, text)
        latencies.append((time.perf_counter() - started) * 1000)
        has_entity = any(expected[name] is not None for name in fields)
        entities_right = same_entities(got, expected, fields)
        valid += got is not None
        exact += got == expected
        entity += entities_right
        intent += got is not None and got.get("intent") == expected.get("intent")
        if has_entity:
            entity_rows.append(entities_right)
    n = len(rows)
    return ExtractionEvaluation(
        rows=n, schema_valid=valid / n, exact_match=exact / n, entity_exact_match=entity / n,
        entity_exact_match_with_entity=float(np.mean(entity_rows)) if entity_rows else None, intent_accuracy=intent / n if "intent" in schema.model_fields else None,
        latency_ms_p50=float(np.percentile(latencies, 50)), latency_ms_p95=float(np.percentile(latencies, 95)),
    )  # fmt: skip


class ExtractionGateReport(GateVerdict):
    """What :func:`gate_extractor` measured; ``agreement`` is the entity exact match."""

    student: ExtractionEvaluation
    base: ExtractionEvaluation | None

    def promotion_figures(self) -> dict[str, Any]:
        return {"schema_valid": self.student.schema_valid, "exact_match": self.student.exact_match}


def gate_extractor(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
    base: bool | str | os.PathLike[str] = True,
    base_limit: int | None = None,
) -> ExtractionGateReport:
    """Evaluate an extraction artifact on its held-out split (and the base model on the same rows).

    Each side is the schema enforcer's extractor in student mode (the SLM and its repair, never an LLM):
    the artifact prompted as it was trained, the base model as the node prompts an undistilled SLM.
    """
    from agentgraph.slm import TransformersSLM

    manifest = read_manifest(model_dir)
    if manifest.get("role") != "extract":
        raise DistillError(f"{model_dir} was trained for role {manifest.get('role')!r}; gate it with the router gate")
    schema = import_schema(manifest["schema"])
    folder = data_dir or manifest["dataset"]["folder"]
    data_manifest, splits = load_extract_rows(folder)
    test = splits["test"] if limit is None else stratified_rows(splits["test"], limit, label=extraction_stratum)
    if not test:
        raise DistillError(f"{folder} has no test rows; the gate needs some")
    student = evaluate_extractor(Extractor(**load_extraction_artifact(model_dir)), test)
    base_eval = None
    if base is not False:
        base_extractor = Extractor(TransformersSLM(manifest["base_model"] if base is True else base), schema)
        base_test = test if base_limit is None else stratified_rows(test, base_limit, label=extraction_stratum)
        base_eval = evaluate_extractor(base_extractor, base_test)
    matches = data_manifest["sha256"] == manifest["dataset"]["sha256"]
    decision, reason = promotion_decision(
        agreement=student.entity_exact_match, threshold=threshold, dataset_matches=matches
    )
    return ExtractionGateReport(
        model_dir=str(model_dir), data_dir=str(folder), dataset_sha256=data_manifest["sha256"], dataset_matches=matches,
        test_rows=len(test), student=student, base=base_eval, agreement=student.entity_exact_match, threshold=threshold,
        decision=decision, reason=reason,
    )  # fmt: skip
