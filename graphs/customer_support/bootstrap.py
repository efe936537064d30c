"""``agentgraph distill bootstrap customer-support``: the example's extractor distilled, gated and promoted in one go.

The example's ``extract`` node fills a :class:`~agentgraph.graphs.customer_support.ticket.SupportTicket`.
Undistilled, the base SmolLM2 writes it under a schema prompt of about 650 tokens: on the lookup and
action requests of ``benchmarks/customer_support.py --per-intent 4`` it filled 76% of tickets exactly, at
about 5 s a request; the bootstrapped extractor filled all of them, at 0.44 s.
:func:`bootstrap_customer_support` runs the steps a user would otherwise run one by one:

1. curate an ``extract`` dataset from the Bitext rows (:func:`support_ticket_examples`, its split kept);
2. fine-tune the SLM on it within a time budget (:func:`~agentgraph.distill.extract.train_extractor_slm`);
3. gate it on the held-out test split (:func:`~agentgraph.distill.extract.gate_extractor`);
4. promote it in the example's model registry when the gate accepts it, so the next graph built
   (``agentgraph run``, :func:`build_customer_support_graph`) serves it; a refused one is not registered.

The router is not distilled here: the example routes with its trained classifier (prepared here if
it is not cached yet), which is more accurate on this data than a distilled SLM router, and faster,
unless a router is promoted in the registry (``agentgraph distill gate --model ROUTER --promote``).

Example (the bootstrap itself takes about 15 minutes on two cores, so it is skipped here)::

    >>> import tempfile
    >>> from agentgraph.distill.registry import ModelRegistry
    >>> from agentgraph.graphs.customer_support.bootstrap import bootstrap_customer_support
    >>> registry = ModelRegistry(tempfile.mkdtemp())
    >>> print(registry.resolve("extract"))  # nothing promoted: the extract node runs the base SLM
    None
    >>> report = bootstrap_customer_support(registry, work_dir=tempfile.mkdtemp())  # doctest: +SKIP
    >>> report.promoted, registry.resolve("extract").path == report.model  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from agentgraph.distill.dataset import DatasetConfig, build_dataset, write_dataset
from agentgraph.distill.extract import ExtractionGateReport, gate_extractor, train_extractor_slm
from agentgraph.distill.gate import DEFAULT_THRESHOLD, PromotionRefusedError, promote
from agentgraph.distill.registry import ModelRegistry
from agentgraph.distill.train import DistillSettings
from agentgraph.graphs.customer_support.distillation import support_ticket_examples
from agentgraph.graphs.customer_support.ticket import SupportTicket
from agentgraph.graphs.customer_support.training import support_router_path

DEFAULT_TRAIN_MINUTES = 10.0
"""Training's share of the bootstrap's 20 minutes on two cores: the dataset takes about one, the gate about three."""
DEFAULT_GATE_ROWS = 300
"""Test rows the gate runs (round-robin over intent and entity fields): every entity kind, in about three minutes."""


class BootstrapReport(BaseModel):
    """What :func:`bootstrap_customer_support` built and decided, with the minutes each step took."""

    dataset: str = Field(description="the curated dataset's folder")
    model: str = Field(description="the trained extractor's folder")
    gate: ExtractionGateReport
    promoted: bool = Field(description="whether the extractor now serves extract")
    router: str = Field(
        description="what the example routes with: the router promoted in the registry, else its classifier"
    )
    minutes: dict[str, float] = Field(description="wall-clock minutes per step: dataset, train, gate, router")


def bootstrap_customer_support(
    registry: ModelRegistry,
    *,
    work_dir: str | Path,
    base: str | Path | None = None,
    train_minutes: float = DEFAULT_TRAIN_MINUTES,
    epochs: float = 3.0,
    gate_rows: int | None = DEFAULT_GATE_ROWS,
    threshold: float = DEFAULT_THRESHOLD,
    progress: Callable[[str], None] = print,
) -> BootstrapReport:
    """Curate, train, gate and (when accepted) promote the example's extractor; see the module docstring.

    Each run writes a new dataset and model folder under ``work_dir`` (named by the time it started),
    so a promoted extractor's folder is never overwritten under a serving graph and rollback finds it.
    ``base`` is the model fine-tuned (default: the packaged SmolLM2-135M-Instruct); ``train_minutes`` caps
    training: the schedule is shortened to the steps that fit.
    """
    folder = Path(work_dir) / dt.datetime.now(dt.UTC).strftime("extract-%Y%m%d-%H%M%S")
    minutes: dict[str, float] = {}

    def timed(step: str, started: float) -> None:
        minutes[step] = (time.perf_counter() - started) / 60
        progress(f"{step:<11} done in {minutes[step]:.1f} min")

    started = time.perf_counter()
    progress("dataset     curating the Bitext requests as SupportTicket targets")
    dataset = build_dataset([support_ticket_examples()], DatasetConfig(role="extract"))
    write_dataset(dataset, folder / "dataset")
    splits = {split: summary["examples"] for split, summary in dataset.manifest["splits"].items()}
    progress("dataset     " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    timed("dataset", started)

    started = time.perf_counter()
    progress(
        f"train       fine-tuning the SLM to fill SupportTicket ({epochs:g} epochs, at most {train_minutes:g} min)"
    )
    settings = DistillSettings(epochs=epochs, max_minutes=train_minutes)
    trained = train_extractor_slm(folder / "dataset", output_dir=folder / "model", schema=SupportTicket,
                                  base=base, settings=settings)  # fmt: skip
    timed("train", started)

    started = time.perf_counter()
    progress(f"gate        the extractor on {gate_rows or 'all'} held-out test requests")
    report = gate_extractor(trained.output_dir, limit=gate_rows, base=False, threshold=threshold)
    timed("gate", started)

    promoted = True
    try:
        promote(trained.output_dir, report)
    except PromotionRefusedError as exc:
        progress(f"refused     {exc}")
        promoted = False
    else:
        registry.promote("extract", trained.output_dir)

    started = time.perf_counter()
    progress("router      the example's classifier (trained on first use; its encoder serves beside any router)")
    classifier = support_router_path()
    timed("router", started)
    serving = registry.current("router")
    return BootstrapReport(
        dataset=str(folder / "dataset"), model=str(Path(trained.output_dir).resolve()), gate=report, promoted=promoted,
        router=serving.path if serving is not None else str(classifier), minutes=minutes,
    )  # fmt: skip
