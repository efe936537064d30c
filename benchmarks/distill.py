"""Distillation benchmark: customer-support dataset -> fine-tuned SmolLM2-135M router or extractor -> gate.

Run: ``python benchmarks/distill.py [--role route|extract] [--work DIR] [--epochs 2] [--max-minutes 20]
[--eval-every 25] [--limit N] [--lora-rank R] [--json]``

1. Dataset: ``agentgraph distill dataset --role ROLE --customer-support``
   (its test split is the fixed test split of the Bitext data, 2,029 rows);
   built once into ``WORK/ROLE/data`` and reused.
2. Train: full fine-tuning (or, with ``--lora-rank``, a LoRA adapter) of the
   packaged SmolLM2-135M-Instruct on the train split (:func:`~agentgraph.distill.train.train_router_slm`,
   :func:`~agentgraph.distill.extract.train_extractor_slm`), printing the
   learning curve every ``--eval-every`` steps against training minutes
   (evaluation time not counted): route accuracy, or the share of extraction
   targets reproduced whole, on a stratified dev subset.
3. Gate, on the test split (``--limit`` rows; default all), the base model on
   ``--base-rows`` of them:

   - route: the real router (:class:`~agentgraph.nodes.router.SLMStrategy` on
     the artifact through :class:`~agentgraph.slm.TransformersSLM`), calibrator
     and gate fitted on dev: accuracy, coverage at the gate, selective
     accuracy, latency.
   - extract: the schema enforcer node in student mode, prompted as it was
     trained: schema-valid rate, entity exact match, intent accuracy, latency.

   Row limits take rows round-robin over classes (the splits are grouped by intent).

Targets (issue 6): route >= 98% test accuracy and >= 99.5% selective accuracy at
>= 90% coverage; extract 100% schema-valid and >= 97% exact match on entity
values; each within 20 minutes of CPU training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agentgraph.commands.distill import extraction_gate_lines, gate_lines
from agentgraph.distill.extract import gate_extractor, train_extractor_slm
from agentgraph.distill.gate import gate_router
from agentgraph.distill.train import DistillSettings, LoraSettings, train_router_slm
from agentgraph.graphs.customer_support import CUSTOMER_SUPPORT_INTENTS, SupportExtraction


def build_dataset(folder: Path, role: str) -> Path:
    if not (folder / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "agentgraph.cli", "distill", "dataset", "--role", role, "--customer-support",
             "--out", str(folder)], check=True,
        )  # fmt: skip
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("route", "extract"), default="route")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "agentgraph-distill-bench"
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--labels", choices=("codes", "names", "descriptions", "learnt"), default="learnt")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="training time limit")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between learning-curve points")
    parser.add_argument("--eval-examples", type=int, default=108, help="dev requests per learning-curve point")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, help="default: where the CPU computes bf16 natively"
    )
    parser.add_argument("--describe-schema", action=argparse.BooleanOptionalAction, default=False,
                        help="extract: state the JSON schema in the prompt instead of letting the model learn it")  # fmt: skip
    parser.add_argument(
        "--lora-rank", type=int, default=0, help="train a LoRA adapter of this rank (0: full fine-tuning)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dev-limit", type=int, help="route: dev rows to fit calibration and gate on (default: all)")
    parser.add_argument("--limit", type=int, help="test rows for the distilled model (default: all 2,029)")
    parser.add_argument("--base-rows", type=int, default=300, help="test rows for the base model (0: skip it)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run in WORK/ROLE/model")
    parser.add_argument("--gate-only", action="store_true", help="gate the model already in WORK/ROLE/model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = build_dataset(args.work / args.role / "data", args.role)
    model = args.work / args.role / (f"lora-r{args.lora_rank}" if args.lora_rank else "model")
    settings = DistillSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, label_style=args.labels,
        max_minutes=args.max_minutes, eval_every=args.eval_every, eval_examples=args.eval_examples,
        num_threads=args.threads, describe_schema=args.describe_schema,
        lora=LoraSettings(rank=args.lora_rank) if args.lora_rank else None,
        **({} if args.bf16 is None else {"bf16": args.bf16}),
    )  # fmt: skip
    if args.role == "route":
        train, role_options = train_router_slm, {"descriptions": CUSTOMER_SUPPORT_INTENTS}
    else:
        train, role_options = train_extractor_slm, {"schema": SupportExtraction}
    if not args.gate_only:
        train(data, output_dir=model, settings=settings, resume=args.resume, overwrite=not args.resume, **role_options)
    manifest = json.loads((model / "manifest.json").read_text())

    started = time.perf_counter()
    base = {"base": args.base_rows > 0, "base_limit": args.base_rows or None}
    if args.role == "route":
        report = gate_router(
            model, data, limit=args.limit, dev_limit=args.dev_limit, descriptions=CUSTOMER_SUPPORT_INTENTS, **base
        )
    else:
        report = gate_extractor(model, data, limit=args.limit, **base)
    gate_seconds = time.perf_counter() - started
    result = {
        "train": {
            key: manifest.get(key)
            for key in (
                "steps",
                "total_steps",
                "stopped_early",
                "training_seconds",
                "cpu_seconds",
                "torch_threads",
                "prompt_tokens",
                "settings",
                "trained_parameters",
            )
        },
        "learning_curve": manifest["learning_curve"],
        "gate": report.model_dump(mode="json"),
        "gate_seconds": round(gate_seconds, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"dataset     {data} (train {manifest['dataset']['train_examples']}, sha256 {manifest['dataset']['sha256'][:16]})"
    )
    print(
        f"prompt      {manifest['prompt_tokens']['mean']} tokens on average, {manifest['prompt_tokens']['shared']} shared"
    )
    print("learning curve (dev subset):")
    for point in manifest["learning_curve"]:
        loss = "-" if point["loss"] is None else f"{point['loss']:.4f}"
        acc = "-" if point["dev_accuracy"] is None else f"{100 * point['dev_accuracy']:.1f}%"
        print(
            f"  step {point['step']:>4}  examples {point['examples']:>5}  {point['train_seconds'] / 60:5.1f} min  loss {loss:>7}  dev {acc}"
        )
    print(f"training    {manifest['steps']}/{manifest['total_steps']} steps, {manifest['training_seconds'] / 60:.1f} min wall, "
          f"{manifest['cpu_seconds'] / 60:.1f} CPU min on {manifest['torch_threads']} threads"
          + (" (time limit reached)" if manifest["stopped_early"] else ""))  # fmt: skip
    if "trained_parameters" in manifest:
        print(f"trained     {manifest['trained_parameters']:,} parameters ({manifest['artifact'].replace('_', ' ')})")
    print("\n".join(gate_lines(report) if args.role == "route" else extraction_gate_lines(report)))
    print(f"gate        {gate_seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
