"""Fine-tune a small causal LM for the route role on a curated dataset (``agentgraph distill train``).

The model learns exactly what :class:`~agentgraph.routing.SLMStrategy`
asks of it at inference: each training prompt is built by the same code path
(``SLMStrategy.render``, ``choice_messages`` and the model's chat template, as
``SLM.choose`` does) and the target is the label as ``SLM.choose`` scores it
(the label tokens, end-of-turn and the newline after it). The loss is taken on
those target tokens only.

The label set shown to the model is part of the artifact (``label_style``):

- ``names``: the intent names, without descriptions. The names carry the
  base model's prior: on 120 examples (5 intents, 15 steps) SmolLM2 reached
  92.5% held-out accuracy with names and stayed at chance with codes.
- ``codes``: each intent gets a one-token code (``A``, ``B``, ...) listed
  without a description: the shortest prompt (27 labels: about 220 tokens
  against 340 with names) and one token per label, but the mapping must be
  learnt from scratch, so it needs more steps.
  :class:`~agentgraph.distill.gate.DistilledSLMStrategy` maps codes back to intents.
- ``descriptions``: the intent names with their decision boundaries, as the
  base model is prompted (the longest prompt).
- ``learnt`` (default): the intent names are the targets but are not listed
  in the prompt (``SLMStrategy(list_labels=False)``): the label set is fixed
  by the artifact, so the model learns it instead of reading it. The prompt
  shrinks from about 290 tokens to about 120, 85 of them shared by every
  example, and a training step costs a quarter of one with ``names``.

Training is full fine-tuning (the default for SmolLM2-135M on CPU) with AdamW,
linear warm-up then cosine decay, a fixed seed, batches of similar length, and
the prompt tokens every example shares (chat preamble and instructions up to
the request) computed once per batch and attended to through a KV cache, so
each example pays only for its request and what follows it. A tqdm bar shows
the loss and ETA; a checkpoint (weights, optimiser, schedule, step) is written
to ``OUTPUT/checkpoints`` every ``checkpoint_every`` steps, and
``resume=True`` continues from it with the same result as an uninterrupted run.

The output folder is a plain Hugging Face safetensors folder (weights,
tokenizer, chat template): :class:`~agentgraph.slm.TransformersSLM` loads it
and vLLM serves it. Its ``manifest.json`` records the base model, the dataset
hash, the settings, the label set, training wall and CPU seconds and the
learning curve.

With ``lora`` set (:class:`LoraSettings`) only a peft LoRA adapter is trained,
for bases too large to fine-tune whole: the output folder then holds the
adapter (``adapter_config.json``, ``adapter_model.safetensors``, naming its
base), the tokenizer and the manifest. ``TransformersSLM(OUTPUT)`` loads the
base with the adapter merged in; ``agentgraph slm serve --model OUTPUT`` serves
the base with ``--enable-lora --lora-modules NAME=OUTPUT``, the adapter under
its folder name. Checkpoints then hold the adapter's weights only.
:func:`merge_adapter` (``agentgraph distill merge``) writes the adapter merged
into its base as a whole model folder, the faster way to serve it on vLLM's CPU
backend.

Example:
    >>> from agentgraph.distill.train import DistillSettings, label_codes
    >>> label_codes(["cancel_order", "get_refund", "track_order"])
    {'A': 'cancel_order', 'B': 'get_refund', 'C': 'track_order'}
    >>> DistillSettings(epochs=2, learning_rate=3e-4).batch_size
    16
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from agentgraph.errors import AgentGraphError
from agentgraph.preparation import loading_quietly
from agentgraph.slm.base import SLM, choice_messages, label_options
from agentgraph.slm.models import cpu_computes_bf16

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TIMING_STEPS = 10
"""With ``max_minutes``, the steps timed to fit the schedule to the time limit."""
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
RowT = TypeVar("RowT")
LabelStyle = Literal["codes", "names", "descriptions", "learnt"]


class DistillError(AgentGraphError):
    """Training or promoting a distilled model cannot go on as asked (the message says what to do)."""


class LoraSettings(BaseModel):
    """A LoRA adapter (peft) trained instead of every weight; vLLM serves it with ``--lora-modules``."""

    rank: int = Field(default=16, ge=1, le=512, description="r: the adapter matrices' inner width")
    alpha: float | None = Field(default=None, gt=0, description="scaling numerator (default: twice the rank)")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        # Every linear layer of a Llama-style block: vLLM applies adapters to these (not to embeddings).
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="names of the linear layers that get an adapter",
    )

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            # peft annotates lora_alpha as int, but a float scales as well (the adapter's scaling is alpha / r).
            lora_alpha=self.alpha or 2 * self.rank,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


class DistillSettings(BaseModel):
    """How an SLM is fine-tuned for a role; recorded in the artifact's manifest."""

    epochs: float = Field(default=2.0, gt=0, description="passes over the train split (fractions allowed)")
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0, description="peak AdamW learning rate")
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="share of steps with a linear warm-up")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="the cosine decays to this share of the peak")
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    label_style: LabelStyle = "learnt"
    max_input_tokens: int = Field(
        default=64, ge=8, description="the request is cut to this many tokens, as the router does"
    )
    describe_schema: bool = Field(
        default=False,
        description="extract role: state the JSON schema in the prompt (False: the model learns it, "
        "as labels are learnt, and the prompt is about 80 tokens instead of 650)",
    )
    max_minutes: float | None = Field(
        default=None,
        gt=0,
        description="training time limit: the schedule is shortened to the steps that fit (timed over the first 10), "
        "and training stops at the limit whatever happens",
    )
    checkpoint_every: int = Field(default=50, ge=1, description="steps between resumable checkpoints")
    eval_every: int | None = Field(
        default=None, ge=1, description="steps between learning-curve points (None: start and end only)"
    )
    eval_examples: int = Field(default=108, ge=0, description="dev examples for the learning curve (0: none)")
    bf16: bool = Field(
        default_factory=cpu_computes_bf16,
        description="bf16 autocast for the forward pass (weights and optimiser stay float32); default: where the "
        "CPU computes bf16 natively",
    )
    lora: LoraSettings | None = Field(
        default=None, description="train a LoRA adapter instead of every weight (None: full fine-tuning)"
    )
    num_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads")
    progress: bool = Field(default=True, description="show a tqdm bar")


class CurvePoint(BaseModel):
    step: int
    examples: int = Field(description="training examples seen so far")
    train_seconds: float
    loss: float | None = Field(description="mean training loss since the previous point")
    dev_accuracy: float | None


class TrainResult(BaseModel):
    """What :func:`train_router_slm` produced."""

    output_dir: str
    manifest: dict[str, Any]


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class RouteDataset:
    """The splits of a route-role dataset folder (``agentgraph distill dataset --role route``)."""

    folder: Path
    manifest: dict[str, Any]
    splits: dict[str, list[tuple[str, str]]]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def labels(self) -> list[str]:
        """The classes of the train split, sorted."""
        return sorted({label for _, label in self.splits["train"]})


def load_route_dataset(folder: str | os.PathLike[str]) -> RouteDataset:
    """Read ``train/dev/test.jsonl`` and ``manifest.json`` written by ``agentgraph distill dataset``."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DistillError(
            f"{folder} holds no dataset manifest; build one with "
            "`agentgraph distill dataset --role route --customer-support --out DIR`"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("role") != "route":
        raise DistillError(
            f"{folder} is a {manifest.get('role')!r} dataset; the router needs one built with --role route"
        )
    splits: dict[str, list[tuple[str, str]]] = {}
    for split in ("train", "dev", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise DistillError(f"{path} is missing; rebuild the dataset with `agentgraph distill dataset`")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        splits[split] = [(row["input"], str(row["target"])) for row in rows]
    if not splits["train"]:
        raise DistillError(f"{folder}/train.jsonl is empty: there is nothing to train on")
    known = {label for _, label in splits["train"]}
    for split in ("dev", "test"):
        unseen = sorted({label for _, label in splits[split]} - known)
        if unseen:
            raise DistillError(
                f"{split} labels {unseen[:5]} never occur in train; rebuild the dataset with more examples of them"
            )
    return RouteDataset(folder=folder, manifest=manifest, splits=splits)


def label_codes(labels: Sequence[str]) -> dict[str, str]:
    """One short code per label, in order: ``A`` .. ``Z``, then ``AA``, ``AB``, ..."""
    letters = [chr(ord("A") + i) for i in range(26)]
    codes = letters + [a + b for a in letters for b in letters]
    if len(labels) > len(codes):
        raise DistillError(
            f"{len(labels)} labels are more than label codes can name ({len(codes)}); use label_style='names'"
        )
    return dict(zip(codes, labels, strict=False))


def lists_labels(style: LabelStyle) -> bool:
    """Whether the router's prompt lists the labels for a model trained with ``style``."""
    return style != "learnt"


def prompt_labels(
    labels: Sequence[str], style: LabelStyle, descriptions: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The label set the model is shown (``{prompt label: description}``) and each prompt label's intent.

    ``descriptions`` (``{intent: decision boundary}``) are shown with style ``descriptions`` only, which needs
    them; an intent they leave out is shown without one.
    """
    if style == "codes":
        intents = label_codes(labels)
        return dict.fromkeys(intents, ""), intents
    intents = {label: label for label in labels}
    if style in ("names", "learnt"):
        return dict.fromkeys(labels, ""), intents
    if not descriptions:
        raise DistillError("label_style 'descriptions' shows each intent with its decision boundary: pass descriptions")
    return {label: descriptions.get(label, "") for label in labels}, intents


class _TokenizerSLM(SLM):
    """Only the prompt side of an SLM: ``tokenize_chat`` as :class:`~agentgraph.slm.TransformersSLM` has it."""

    def __init__(self, tokenizer: Any, model_name: str = "training") -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_context_tokens = 1 << 30

    def tokenize_chat(self, messages, *, add_generation_prompt: bool) -> list[int]:
        from agentgraph.slm.embedded import TransformersSLM

        return TransformersSLM.tokenize_chat(self, messages, add_generation_prompt=add_generation_prompt)  # type: ignore[arg-type]

    def _score_continuations(self, prefix, continuations):
        raise DistillError("the training tokenizer cannot score; load the model with TransformersSLM")

    def _generate_json(self, messages, prompt_ids, json_schema, max_tokens):
        raise DistillError("the training tokenizer cannot generate; load the model with TransformersSLM")

    def _generate_text(self, messages, prompt_ids, max_tokens, stop):
        raise DistillError("the training tokenizer cannot generate; load the model with TransformersSLM")


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt exactly as ``SLM.choose`` builds it, then its target."""

    prompt: list[int]
    target: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt + self.target

    @property
    def labels(self) -> list[int]:
        """Causal-LM labels: -100 (ignored) on every prompt token, the token id on the target."""
        return [-100] * len(self.prompt) + self.target


class RoutePromptEncoder:
    """Builds training prompts with the router's own code path (``SLMStrategy.render`` and ``SLM.choose``'s steps)."""

    def __init__(
        self, tokenizer: Any, labels: Mapping[str, str], *, max_input_tokens: int, list_labels: bool = True
    ) -> None:
        from agentgraph.routing import Router, SLMStrategy

        self.slm = _TokenizerSLM(tokenizer)
        self.strategy = SLMStrategy(self.slm, labels, max_input_tokens=max_input_tokens, list_labels=list_labels)
        self.router = Router([self.strategy])
        self.options = label_options(self.strategy.labels)

    def prompt_ids(self, text: str) -> list[int]:
        """The request cleaned and cut as ``Router.decide`` does, rendered as ``SLMStrategy`` and ``SLM.choose`` do."""
        from agentgraph.text import require_text

        text, _ = self.router.fit_to_budgets(require_text(text, what="request"))
        messages = choice_messages(
            self.strategy.render(text), self.options, None, list_labels=self.strategy.list_labels
        )
        return self.slm.tokenize_chat(messages, add_generation_prompt=True)

    def target_ids(self, label: str) -> list[int]:
        return self.slm._label_suffix(label)

    def encode(self, text: str, label: str) -> Encoded:
        return Encoded(self.prompt_ids(text), self.target_ids(label))


def common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix every sequence shares, kept short of each sequence's last prompt token."""
    if not sequences:
        return []
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return list(first[:length])


# --------------------------------------------------------------------------------------------- model maths


def batch_loss(model: Any, shared: Sequence[int], rows: Sequence[Encoded], *, pad_id: int) -> tuple[Any, int]:
    """Mean cross-entropy over the target tokens of ``rows`` (each starting with ``shared``); returns (loss, tokens).

    ``shared`` is run once, its keys and values repeated over the batch; each
    row's remaining tokens are right-padded (a causal model never lets padding
    reach earlier positions). The LM head runs on target positions only.
    """
    import torch

    rests = [row.input_ids[len(shared) :] for row in rows]
    width = max(map(len, rests))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), len(shared) + width), dtype=torch.long)
    mask[:, : len(shared)] = 1
    positions, targets = [], []
    for r, (row, rest) in enumerate(zip(rows, rests, strict=False)):
        ids[r, : len(rest)] = torch.tensor(rest)
        mask[r, len(shared) : len(shared) + len(rest)] = 1
        start = len(row.prompt) - len(shared)  # the first target token's index in ``rest``
        for offset, token in enumerate(row.target):
            positions.append((r, start + offset - 1))  # the position whose output predicts it
            targets.append(token)
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    if shared:
        first = body(input_ids=torch.tensor([list(shared)]), use_cache=True)
        cache = first.cache
        cache.batch_repeat_interleave(len(rows))
        hidden = body(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True).last_hidden_state
    else:
        hidden = body(input_ids=ids, attention_mask=mask[:, len(shared) :]).last_hidden_state
    index = torch.tensor(positions)
    picked = hidden[index[:, 0], index[:, 1]]
    logits = model.lm_head(picked)
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
    return loss, len(targets)


def label_logprobs(model: Any, prompt: Sequence[int], targets: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Sum of log P(target tokens | prompt) for each label, as the embedded backend scores them."""
    import torch

    labels = list(targets)
    width = max(len(t) for t in targets.values())
    batch = torch.zeros((len(labels), width), dtype=torch.long)
    mask = torch.zeros((len(labels), len(prompt) + width), dtype=torch.long)
    mask[:, : len(prompt)] = 1
    for r, label in enumerate(labels):
        batch[r, : len(targets[label])] = torch.tensor(list(targets[label]))
        mask[r, len(prompt) : len(prompt) + len(targets[label])] = 1
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([list(prompt)]), use_cache=True, logits_to_keep=1)
        cache = first.cache
        cache.batch_repeat_interleave(len(labels))
        rest = model(input_ids=batch, attention_mask=mask, cache=cache)
    logits = torch.cat([first.logits[:, -1:, :].expand(len(labels), -1, -1), rest.logits[:, :-1, :]], dim=1)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(2, batch.unsqueeze(-1)).squeeze(-1)
    return {label: float(logprobs[r, : len(targets[label])].sum()) for r, label in enumerate(labels)}


def dev_accuracy(model: Any, encoder: RoutePromptEncoder, rows: Sequence[tuple[str, str]]) -> float:
    """Share of ``rows`` whose highest-scoring label (as ``SLM.choose`` picks) is right."""
    targets = {label: encoder.target_ids(label) for label in encoder.options}
    was_training = model.training
    model.eval()
    try:
        hits = 0
        for text, label in rows:
            scores = label_logprobs(model, encoder.prompt_ids(text), targets)
            hits += max(scores, key=scores.__getitem__) == label
    finally:
        model.train(was_training)
    return hits / len(rows)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, grouped by length in pools of 16 batches, shuffled again."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def lr_factor(step: int, total: int, settings: DistillSettings) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio``."""
    warmup = int(settings.warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _second_field(row: Any) -> str:
    """A ``(text, label)`` row's label."""
    return row[1]


def stratified_rows(rows: Sequence[RowT], count: int, *, label: Callable[[RowT], str] = _second_field) -> list[RowT]:
    """Up to ``count`` rows taken round-robin over labels (each label's rows in file order).

    Dataset splits are written grouped by label, so their first rows are one
    class: a sample of a split is taken with this, never by slicing.
    """
    by_label: dict[str, list[RowT]] = defaultdict(list)
    for row in rows:
        by_label[label(row)].append(row)
    chosen: list[RowT] = []
    depth = 0
    while len(chosen) < min(count, len(rows)):
        for name in sorted(by_label):
            if depth < len(by_label[name]) and len(chosen) < count:
                chosen.append(by_label[name][depth])
        depth += 1
    return chosen


def settings_hash(settings: DistillSettings) -> str:
    """Hash of the settings that change the trained weights (not the time limit, threads or display)."""
    relevant = settings.model_dump(
        exclude={"max_minutes", "num_threads", "progress", "checkpoint_every", "eval_every", "eval_examples"}
    )
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- training


def train_router_slm(
    dataset_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    settings: DistillSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> TrainResult:
    """Fine-tune ``base`` (default: the packaged SmolLM2-135M-Instruct) for the route role on ``dataset_dir``.

    Writes a model folder with ``manifest.json`` into ``output_dir``. With
    ``resume`` a run continues from ``output_dir/checkpoints``; without it an
    existing checkpoint or finished model is an error unless ``overwrite``.
    ``on_step(step, loss)`` is called after each optimiser step (for progress
    reports; an exception there stops training, as a kill would, and the last
    checkpoint stays). ``descriptions`` (``{intent: decision boundary}``) are
    shown to the model with ``label_style="descriptions"`` (:func:`prompt_labels`).
    """
    from transformers import AutoTokenizer

    from agentgraph.slm.models import prepare_model_folder

    settings = settings or DistillSettings()
    output = _prepare_output(output_dir, resume=resume, overwrite=overwrite)
    dataset = load_route_dataset(dataset_dir)
    base_folder = prepare_model_folder(base)
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    shown, intents = prompt_labels(dataset.labels(), settings.label_style, descriptions)
    to_prompt_label = {intent: code for code, intent in intents.items()}
    encoder = RoutePromptEncoder(
        tokenizer, shown, max_input_tokens=settings.max_input_tokens, list_labels=lists_labels(settings.label_style)
    )
    train = [encoder.encode(text, to_prompt_label[label]) for text, label in dataset.splits["train"]]
    eval_rows = [
        (text, to_prompt_label[label]) for text, label in stratified_rows(dataset.splits["dev"], settings.eval_examples)
    ]
    job = TrainingJob(
        role="route", dataset_folder=dataset.folder, dataset_sha256=dataset.sha256, base_folder=base_folder,
        tokenizer=tokenizer, train=train, evaluate=(lambda model: dev_accuracy(model, encoder, eval_rows)) if eval_rows else None,
        manifest={
            "labels": {"style": settings.label_style, "shown": shown, "intents": intents},
            "router": {"prompt": encoder.strategy.prompt.id, "max_input_tokens": settings.max_input_tokens,
                       "list_labels": encoder.strategy.list_labels},
        },
    )  # fmt: skip
    return fine_tune(job, output, settings, resume=resume, on_step=on_step)


@dataclass
class TrainingJob:
    """What :func:`fine_tune` needs of a role: encoded train examples, an evaluation, manifest entries."""

    role: str
    dataset_folder: Path
    dataset_sha256: str
    base_folder: Path
    tokenizer: Any
    train: list[Encoded]
    evaluate: Callable[[Any], float] | None
    manifest: dict[str, Any]


def _prepare_output(output_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> Path:
    output = Path(output_dir)
    checkpoint_file = output / CHECKPOINTS / "last.pt"
    if overwrite and output.is_dir() and any(output.iterdir()):
        if not ((output / MANIFEST).is_file() or (output / CHECKPOINTS).is_dir()):
            raise DistillError(f"refusing to delete {output}: it holds no distill output; choose an empty or new --out")
        shutil.rmtree(output)
    elif (output / MANIFEST).is_file():
        raise DistillError(
            f"{output} already holds a trained model; pass --overwrite (overwrite=True) or choose another --out"
        )
    elif checkpoint_file.is_file() and not resume:
        raise DistillError(
            f"{output} holds a checkpoint of an unfinished run; pass --resume to continue it or --overwrite to start over"
        )
    output.mkdir(parents=True, exist_ok=True)
    return output


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero, then restore torch's default.

    Once the loss is small, gradients and AdamW's moments drift into the
    denormal range, where CPU arithmetic is many times slower: a router run's
    steps went from 2.7 s to 6 s past step 80 without it.
    """
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fine_tune(
    job: TrainingJob,
    output: Path,
    settings: DistillSettings,
    *,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """The training loop every role shares: full fine-tuning on ``job.train``, checkpoints, curve, model folder."""
    with denormals_flushed():
        return _fine_tune(job, output, settings, resume=resume, on_step=on_step)


def _fine_tune(
    job: TrainingJob,
    output: Path,
    settings: DistillSettings,
    *,
    resume: bool,
    on_step: Callable[[int, float], None] | None,
) -> TrainResult:
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint_file = output / CHECKPOINTS / "last.pt"
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    base_folder, tokenizer, train = job.base_folder, job.tokenizer, job.train
    shared = common_prefix([row.prompt for row in train])

    with loading_quietly():
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    model.config.use_cache = True
    if settings.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, settings.lora.peft_config())
    model.train()
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    per_epoch = math.ceil(len(train) / settings.batch_size)
    planned_steps = total_steps = max(1, math.ceil(settings.epochs * per_epoch))
    # The schedule's length; with max_minutes it shrinks to the steps that fit (measured over the first steps).
    horizon = [total_steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, horizon[0], settings))

    fingerprint = {
        "dataset_sha256": job.dataset_sha256,
        "settings_sha256": settings_hash(settings),
        "base": str(base_folder),
    }
    step, train_seconds, cpu_seconds = 0, 0.0, 0.0
    curve: list[dict[str, Any]] = []
    if resume and checkpoint_file.is_file():
        state = torch.load(checkpoint_file, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise DistillError(
                f"the checkpoint in {checkpoint_file.parent} was made with other data, settings or base model "
                f"({state['fingerprint']}); pass --overwrite to start over"
            )
        model.load_state_dict(state["model"], strict=False)  # the trained weights; the fingerprint vouches for the rest
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, train_seconds, cpu_seconds, curve = (
            state["step"],
            state["train_seconds"],
            state["cpu_seconds"],
            state["curve"],
        )
        total_steps = horizon[0] = state["total_steps"]
        logger.info("resuming from step %d of %d", step, total_steps)

    def save_checkpoint() -> None:
        checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        staging = checkpoint_file.with_suffix(".tmp")
        torch.save(
            {
                "fingerprint": fingerprint, "step": step, "model": trained_weights(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "train_seconds": train_seconds,
                "total_steps": total_steps, "cpu_seconds": cpu_seconds, "curve": curve,
            },
            staging,
        )  # fmt: skip
        os.replace(staging, checkpoint_file)

    def curve_point(losses: list[float]) -> None:
        accuracy = job.evaluate(model) if job.evaluate is not None else None
        point = CurvePoint(
            step=step, examples=min(step * settings.batch_size, total_steps * settings.batch_size),
            train_seconds=round(train_seconds, 1), loss=sum(losses) / len(losses) if losses else None,
            dev_accuracy=accuracy,
        )  # fmt: skip
        curve.append(point.model_dump())
        logger.info("step %d: loss %s, dev accuracy %s", step, point.loss, accuracy)

    lengths = [len(row.input_ids) for row in train]
    schedule: dict[int, list[list[int]]] = {}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16)
    losses: list[float] = []
    stopped_early = False
    if step == 0 and not curve:
        curve_point([])
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not settings.progress, desc="distill train", unit="step")
    try:
        while step < total_steps:
            if settings.max_minutes is not None and train_seconds >= settings.max_minutes * 60:
                stopped_early = True
                break
            epoch, index = divmod(step, per_epoch)
            if epoch not in schedule:
                schedule[epoch] = epoch_batches(lengths, settings.batch_size, settings.seed, epoch)
            batch = schedule[epoch][index]
            started, started_cpu = time.perf_counter(), time.process_time()
            with autocast:
                loss, _ = batch_loss(model, shared, [train[i] for i in batch], pad_id=tokenizer.pad_token_id or 0)
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trained, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_seconds += time.perf_counter() - started
            cpu_seconds += time.process_time() - started_cpu
            loss = float(loss.detach())
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if settings.eval_every and step % settings.eval_every == 0 and step < total_steps:
                curve_point(losses)
                losses = []
            if step % settings.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
            if settings.max_minutes is not None and step == TIMING_STEPS and total_steps == planned_steps:
                fitting = int((settings.max_minutes * 60 - train_seconds) / (train_seconds / step) * 0.97) + step
                if fitting < total_steps:
                    logger.info("%d of %d planned steps fit in %.1f minutes: the schedule ends there", fitting, total_steps,
                                settings.max_minutes)  # fmt: skip
                    total_steps = horizon[0] = max(fitting, step + 1)
                    bar.total = total_steps
                    bar.refresh()
            if on_step is not None:
                on_step(step, loss)
    finally:
        bar.close()
    curve_point(losses)

    model.eval()
    if settings.lora is not None:
        # The adapter names its base as prepare_model_folder takes it: the packaged default by name, else the folder.
        model.peft_config["default"].base_model_name_or_path = portable_base(base_folder)
    with loading_quietly():  # its bar is for sharded checkpoints; this one is a single file
        model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    manifest = {
        "format_version": FORMAT_VERSION,
        "role": job.role,
        "base_model": str(base_folder),
        "base_model_name": base_folder.name,
        "artifact": "lora_adapter" if settings.lora is not None else "model",
        "trained_parameters": sum(parameter.numel() for parameter in trained),
        "dataset": {"folder": str(job.dataset_folder), "sha256": job.dataset_sha256, "train_examples": len(train)},
        "settings": settings.model_dump(mode="json"),
        **job.manifest,
        "prompt_tokens": {"shared": len(shared), "mean": round(sum(lengths) / len(lengths), 1)},
        "steps": step,
        "total_steps": total_steps,
        "planned_steps": planned_steps,
        "epochs_done": round(step / per_epoch, 3),
        "stopped_early": stopped_early,
        "training_seconds": round(train_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "metrics": {"dev_accuracy": curve[-1]["dev_accuracy"], "final_loss": curve[-1]["loss"]},
        "learning_curve": curve,
    }
    write_manifest(output, manifest)
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    return TrainResult(output_dir=str(output), manifest=manifest)


def trained_weights(model: Any) -> dict[str, Any]:
    """The weights training changes (all of them, or a LoRA adapter's): what a checkpoint must keep."""
    names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: tensor for name, tensor in model.state_dict().items() if name in names}


def portable_base(base_folder: Path) -> str:
    """How an adapter names its base: the packaged default by name (its folder is per machine), else the folder."""
    from agentgraph.slm.models import DEFAULT_MODEL, default_model_folder

    return DEFAULT_MODEL if base_folder == default_model_folder() else str(base_folder)


def merge_adapter(
    adapter_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the LoRA adapter in ``adapter_dir`` merged into its base as a whole model folder.

    The folder answers as the adapter does (float32, as training keeps the
    weights) and is served by vLLM as a plain model: vLLM's CPU LoRA kernels make
    every request several times slower than the base model. Its manifest is the
    adapter's with ``artifact: "model"`` and ``merged_from``.
    """
    import torch
    from transformers import AutoTokenizer

    from agentgraph.slm.models import is_adapter_folder, load_causal_lm, model_and_adapter

    if not is_adapter_folder(adapter_dir):
        raise DistillError(
            f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json); only `distill train --lora` output merges"
        )
    manifest = read_manifest(adapter_dir)
    base_folder, adapter = model_and_adapter(adapter_dir)
    model = load_causal_lm(base_folder, adapter, dtype=torch.float32)
    output = _prepare_output(output_dir, resume=False, overwrite=overwrite)
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(output)
    write_manifest(output, manifest | {"artifact": "model", "merged_from": str(adapter)})
    return output


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model folder written by :func:`train_router_slm`."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise DistillError(f"{model_dir} holds no distilled-model manifest; train one with `agentgraph distill train`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_artifact(model_dir: str | os.PathLike[str], role: str, slm: SLM | None = None) -> tuple[dict[str, Any], SLM]:
    """The manifest of a model folder trained for ``role``, and ``slm`` or else the folder loaded in-process."""
    manifest = read_manifest(model_dir)
    if manifest.get("role") != role:
        raise DistillError(f"{model_dir} was trained for role {manifest.get('role')!r}, not {role}")
    if slm is None:
        from agentgraph.slm import TransformersSLM

        slm = TransformersSLM(model_dir)
    return manifest, slm


def write_manifest(model_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    path = Path(model_dir) / MANIFEST
    staging = path.with_name(f".{MANIFEST}.tmp")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(staging, path)
    return path
