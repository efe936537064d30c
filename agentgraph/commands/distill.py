"""``agentgraph distill``: turn the frontier LLM's logged calls into training data for a small model.

``agentgraph distill dataset --role route --out DIR [--traces STORE] [--import FILE ...] [--customer-support [CSV]]``
curates a training set for one role (``route`` or ``extract``) from the
accepted calls in a trace store (the SQLite file an
:class:`~agentgraph.records.traces.LLMCallRecorder` writes, or the ``postgresql://``
URL of the database several workers share), labelled CSV/JSONL
files and the Bitext customer-support data (its own train/dev/test split kept);
it scrubs PII, de-duplicates, clusters, splits and balances
(:mod:`agentgraph.distill.dataset`), writes ``train.jsonl``, ``dev.jsonl``,
``test.jsonl`` and ``manifest.json`` into DIR and prints what each step did;
``--json`` prints the manifest instead.

``agentgraph distill train --role route --data DIR --out MODEL [--epochs N] [--max-minutes M] [--resume]``
fine-tunes the SLM (default: the packaged SmolLM2-135M-Instruct) on that
dataset (:mod:`agentgraph.distill.train`) with a progress bar and resumable
checkpoints, and writes a model folder with its manifest.

``agentgraph distill gate --model MODEL [--data DIR] [--threshold 0.92] [--limit N] [--promote] [--json]``
evaluates it with the real router on the held-out test split against the base
model and, with ``--promote``, records the decision in its manifest, exiting
with status 2 when agreement is below the threshold (:mod:`agentgraph.distill.gate`).
An accepted extractor is also registered to serve ``extract``, and an accepted router
(a distilled SLM, with the calibration and gate fitted on dev, or a retrained classifier) to serve
``router``, in the model registry (``--registry``, default the example graph's; see ``agentgraph models``).

``agentgraph distill agree --model MODEL --slm-url URL [--limit 200] [--json]``
puts held-out requests to the model in-process and to a vLLM server serving
the same folder (``agentgraph slm serve --model MODEL``) and prints how often
they answer the same (:mod:`agentgraph.distill.agreement`).

``agentgraph distill bootstrap customer-support [--train-minutes 10] [--gate-rows 300]`` curates,
trains, gates and promotes the example graph's extractor in one command, so that the next graph built
serves it (:mod:`agentgraph.graphs.customer_support.bootstrap`); it exits with status 2 when the gate
refuses the extractor, which is then not registered.

``agentgraph distill drift --traces STORE --data DIR [--window N] [--hours H] [--json]``
compares the router's last N route decisions in a trace store with the dataset
it was trained on (:mod:`agentgraph.distill.drift`: out-of-scope rate,
confidence PSI, embedding distance), records the check in the store and prints
the metrics and a ``RETRAIN`` line when a threshold is crossed, exiting with
status 3 then (0 otherwise; 2 on an error). The reference is built on first use
(the held-out split routed by ``--classifier``, the example graph's router by
default) and kept in the user cache by the dataset's sha256.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agentgraph.commands import open_traces
from agentgraph.errors import AgentGraphError

ROLES = ("route", "extract")
"""As :data:`agentgraph.distill.dataset.ROLES`, named here so that building the parser imports no numpy."""
HELD_OUT_SPLITS = ("dev", "test")
"""As :data:`agentgraph.distill.drift.HeldOutSplit`, for the same reason."""


def register(groups: argparse._SubParsersAction) -> None:
    distill = groups.add_parser("distill", help="distil the LLM's work into a small model: dataset, train, gate")
    commands = distill.add_subparsers(dest="distill_command", required=True, metavar="DISTILL_COMMAND")
    dataset = commands.add_parser(
        "dataset", help="curate train/dev/test splits for one role from traces and labelled files"
    )
    dataset.add_argument(
        "--role", choices=ROLES, required=True, help="route: a label per input; extract: a JSON object"
    )
    dataset.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.jsonl and manifest.json")
    dataset.add_argument(
        "--traces", help="a trace store written by LLMCallRecorder: a SQLite file or a postgresql:// URL"
    )
    dataset.add_argument("--import", dest="imports", type=Path, action="append", default=[], metavar="FILE",
                         help="a labelled CSV or JSONL file (repeatable)")  # fmt: skip
    dataset.add_argument(
        "--text-column", help="of imported files (default: the first of text, input, instruction, request)"
    )
    dataset.add_argument(
        "--label-column", help="of imported files (default: route: label or intent; extract: target or label)"
    )
    dataset.add_argument("--customer-support", nargs="?", const=True, metavar="CSV",
                         help="add the Bitext customer-support data, its split kept (default file: "
                              "$AGENTGRAPH_CUSTOMER_SUPPORT_CSV, else ../shared/data/bitext-customer-support/train.csv)")  # fmt: skip
    dataset.add_argument("--step-type", dest="step_types", action="append", metavar="TYPE",
                         help="trace step types to learn from (repeatable; default: the role's own)")  # fmt: skip
    dataset.add_argument("--seed", type=int, help="split, cluster and oversampling seed (default: the benchmarks')")
    dataset.add_argument(
        "--dev-fraction", type=float, default=0.1, help="of examples without a fixed split (default 0.1)"
    )
    dataset.add_argument(
        "--test-fraction", type=float, default=0.1, help="of examples without a fixed split (default 0.1)"
    )
    dataset.add_argument("--dedup-threshold", type=float, help="cosine at which two inputs count as one (default 0.98)")
    dataset.add_argument("--clusters", type=int, help="k-means clusters per step type (default: sqrt(n/2), at most 32)")
    dataset.add_argument(
        "--class-floor", type=int, help="oversample train classes below this many (default: half the median; 0: off)"
    )
    dataset.add_argument("--label-field", help="the key of a JSON target that holds its class (default: intent)")
    dataset.add_argument("--json", action="store_true", help="print the manifest as JSON")
    dataset.set_defaults(handler=_dataset)

    train = commands.add_parser("train", help="fine-tune the SLM for one role on a curated dataset")
    train.add_argument(
        "--role", choices=ROLES, required=True, help="route: pick a label; extract: fill a pydantic schema"
    )
    train.add_argument(
        "--schema", help="extract: the pydantic model as module:Class (default: the example's SupportExtraction)"
    )
    train.add_argument(
        "--data", type=Path, required=True, help="a dataset folder written by `agentgraph distill dataset`"
    )
    train.add_argument(
        "--out", type=Path, required=True, help="the model folder to write (weights, tokenizer, manifest.json)"
    )
    train.add_argument(
        "--base", help="a local model folder to start from (default: the packaged SmolLM2-135M-Instruct)"
    )
    train.add_argument("--epochs", type=float, help="passes over the train split (default 2)")
    train.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    train.add_argument("--lr", dest="learning_rate", type=float, help="peak learning rate (default 1e-4)")
    train.add_argument("--labels", dest="label_style", choices=("codes", "names", "descriptions", "learnt"),
                       help="the label set the model is shown (default learnt: the names, not listed in the prompt, the shortest "
                            "prompt; names: listed; codes: one-token codes; descriptions: names with the customer-support "
                            "intents' boundaries)")  # fmt: skip
    train.add_argument("--describe-schema", action=argparse.BooleanOptionalAction, default=None,
                       help="extract: state the JSON schema in the prompt (default off: the model learns it, a prompt 10x shorter)")  # fmt: skip
    train.add_argument("--max-minutes", type=float, help="stop training after this much time and write the model")
    train.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints (default 50)")
    train.add_argument(
        "--eval-every", type=int, help="steps between learning-curve points on dev (default: start and end)"
    )
    train.add_argument("--eval-examples", type=int, help="dev examples per learning-curve point (default 108; 0: none)")
    train.add_argument("--seed", type=int, help="training seed (default 0)")
    train.add_argument("--threads", dest="num_threads", type=int, help="torch threads (default: torch's)")
    train.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast for the forward pass (default: on where the CPU computes bf16 natively; weights and optimiser stay float32)")  # fmt: skip
    train.add_argument("--lora", action="store_true",
                       help="train a LoRA adapter (peft) instead of every weight, for larger bases; vLLM serves it with --lora-modules")  # fmt: skip
    train.add_argument("--lora-rank", type=int, help="the adapter's rank (default 16; implies --lora)")
    train.add_argument(
        "--lora-alpha", type=float, help="the adapter's scaling alpha (default twice the rank; implies --lora)"
    )
    train.add_argument("--lora-targets", help="comma-separated linear layers that get an adapter "
                       "(default: q,k,v,o,gate,up,down _proj; implies --lora)")  # fmt: skip
    train.add_argument(
        "--resume", action="store_true", help="continue the unfinished run in --out from its last checkpoint"
    )
    train.add_argument("--overwrite", action="store_true", help="delete what --out holds and start over")
    train.add_argument("--json", action="store_true", help="print the manifest as JSON")
    train.set_defaults(handler=_train)

    merge = commands.add_parser(
        "merge", help="merge a LoRA adapter into its base: a whole model folder (faster on vLLM's CPU backend)"
    )
    merge.add_argument(
        "--model", type=Path, required=True, help="an adapter folder written by `agentgraph distill train --lora`"
    )
    merge.add_argument("--out", type=Path, required=True, help="the model folder to write")
    merge.add_argument("--overwrite", action="store_true", help="replace the distilled model --out holds")
    merge.set_defaults(handler=_merge)

    gate = commands.add_parser(
        "gate",
        help="evaluate a distilled model on held-out data against the base model, or a retrained classifier "
        "against the serving one; --promote",
    )
    gate.add_argument(
        "--model", type=Path, required=True,
        help="a model folder written by `agentgraph distill train`, or a saved IntentClassifier",
    )  # fmt: skip
    gate.add_argument("--data", type=Path, help="the dataset folder (default: the one the model was trained on)")
    # The defaults are the library's (DEFAULT_THRESHOLD 0.92; for a classifier CLASSIFIER_MIN_ACCURACY 0.95 and
    # CLASSIFIER_MAX_ERROR_RISE 0.01), read when the gate runs: the gate module is slow to import.
    gate.add_argument(
        "--threshold", type=float,
        help="agreement needed to promote (default 0.92); a classifier's selective accuracy (default 0.95)",
    )  # fmt: skip
    gate.add_argument(
        "--rows", type=Path,
        help="a classifier's held-out rows: JSONL of {\"text\", \"label\"} it was not trained on (required for one)",
    )  # fmt: skip
    gate.add_argument(
        "--current", type=Path, help="the classifier to gate against (default: the one serving router in --registry)"
    )
    gate.add_argument(
        "--max-error-rise", type=float,
        help="how much more of the rows a classifier may answer wrongly than the current one (default 0.01)",
    )  # fmt: skip
    gate.add_argument("--limit", type=int, help="N test rows, round-robin over classes (default: all)")
    gate.add_argument("--dev-limit", type=int, help="dev rows to fit calibration and gate on (default: all)")
    gate.add_argument(
        "--base-limit", type=int, help="dev and test rows for the base model (default: as --dev-limit and --limit)"
    )
    gate.add_argument("--no-base", action="store_true", help="skip the base model")
    gate.add_argument(
        "--target-accuracy", type=float, default=0.995, help="selective accuracy the gate aims for on dev"
    )
    gate.add_argument("--max-rejection", type=float, default=0.1, help="most of dev the gate may reject (default 0.1)")
    gate.add_argument("--promote", action="store_true",
                      help="record the decision in the manifest (exit 2 when refused); an accepted extractor "
                      "is registered to serve extract, an accepted router (distilled, or a classifier) to serve "
                      "router (a classifier's gate records its decision either way)")  # fmt: skip
    gate.add_argument("--registry", type=Path, help="the model registry (default: the example graph's)")
    gate.add_argument("--json", action="store_true", help="print the report as JSON")
    gate.set_defaults(handler=_gate)

    agree = commands.add_parser(
        "agree", help="check that a vLLM server serving a distilled model answers as the embedded backend"
    )
    agree.add_argument("--model", type=Path, required=True, help="a model folder written by `agentgraph distill train`")
    agree.add_argument(
        "--slm-url", required=True, help="the vLLM server serving it (`agentgraph slm serve --model MODEL`)"
    )
    agree.add_argument(
        "--served-model",
        help="the model name on the server (default: an adapter's folder name, else the only model it serves)",
    )
    agree.add_argument("--data", type=Path, help="the dataset folder (default: the one the model was trained on)")
    agree.add_argument(
        "--limit", type=int, default=200, help="test rows, round-robin over classes (default 200; 0: all)"
    )
    agree.add_argument("--json", action="store_true", help="print the report as JSON")
    agree.set_defaults(handler=_agree)

    bootstrap = commands.add_parser(
        "bootstrap", help="for an example graph: curate, train, gate and promote its distilled models in one go"
    )
    bootstrap.add_argument("graph", choices=("customer-support",), help="the example graph")
    bootstrap.add_argument(
        "--base", help="a local model folder to fine-tune (default: the packaged SmolLM2-135M-Instruct)"
    )
    bootstrap.add_argument("--train-minutes", type=float, help="training time limit (default 10)")
    bootstrap.add_argument("--epochs", type=float, default=3.0, help="passes over the train split (default 3)")
    bootstrap.add_argument("--gate-rows", type=int, help="held-out test rows the gate runs (default 300; 0: all)")
    bootstrap.add_argument("--threshold", type=float, help="entity exact match needed to promote (default 0.92)")
    bootstrap.add_argument("--registry", type=Path, help="the model registry (default: the example graph's)")
    bootstrap.add_argument(
        "--work-dir", type=Path, help="where datasets and models go (default: the registry's bootstrap/)"
    )
    bootstrap.add_argument("--json", action="store_true", help="print the report as JSON")
    bootstrap.set_defaults(handler=_bootstrap)

    drift = commands.add_parser(
        "drift", help="compare recent routing with the training set; exit 3 when a retrain is due"
    )
    drift.add_argument(
        "--traces",
        required=True,
        help="the trace store the router logs its decisions to: a SQLite file or a postgresql:// URL",
    )
    drift.add_argument(
        "--data", type=Path, required=True, help="the router's dataset (`agentgraph distill dataset --role route`)"
    )
    drift.add_argument("--node", default="router", help="the router node's name in the decisions (default router)")
    drift.add_argument("--window", type=int, default=200, help="the last N route decisions (default 200)")
    drift.add_argument("--hours", type=float, help="only decisions of the last H hours")
    drift.add_argument("--split", choices=HELD_OUT_SPLITS, default="test",
                       help="the reference's held-out split: one the router never trained or calibrated on (default test)")  # fmt: skip
    drift.add_argument("--classifier", type=Path, help="the classifier folder that routes the held-out split for the baseline "
                       "(default: the example graph's, built on first use)")  # fmt: skip
    drift.add_argument(
        "--rebuild-reference", action="store_true", help="rebuild the cached reference (the router changed)"
    )
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    drift.set_defaults(handler=_drift)


def _dataset(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agentgraph.distill.dataset import DatasetConfig, build_dataset, file_examples, trace_examples, write_dataset

    if not (args.traces or args.imports or args.customer_support):
        raise AgentGraphError("nothing to curate: give --traces STORE, --import FILE or --customer-support")
    options = {
        "seed": args.seed, "dedup_threshold": args.dedup_threshold, "clusters": args.clusters,
        "class_floor": args.class_floor, "label_field": args.label_field, "step_types": args.step_types,
    }  # fmt: skip
    fractions = {
        "train": 1 - args.dev_fraction - args.test_fraction,
        "dev": args.dev_fraction,
        "test": args.test_fraction,
    }
    try:
        config = DatasetConfig(
            role=args.role, fractions=fractions, **{k: v for k, v in options.items() if v is not None}
        )
    except ValidationError as exc:
        raise AgentGraphError(f"invalid options: {exc.errors()[0]['msg']}") from exc

    sources = []
    if args.traces:
        store = open_traces(args.traces, "record calls with LLMCallRecorder first")
        try:
            sources.append(
                trace_examples(store, role=config.role, step_types=config.step_types, label_field=config.label_field)
            )
        finally:
            store.close()
    for path in args.imports:
        sources.append(
            file_examples(path, role=config.role, text_column=args.text_column, label_column=args.label_column,
                          label_field=config.label_field)
        )  # fmt: skip
    if args.customer_support:
        from agentgraph.graphs.customer_support.distillation import customer_support_examples

        path = None if args.customer_support is True else Path(args.customer_support)
        sources.append(customer_support_examples(path, role=config.role))

    dataset = build_dataset(sources, config)
    manifest_path = write_dataset(dataset, args.out)
    if args.json:
        print(json.dumps(dataset.manifest, indent=2, sort_keys=True))
    else:
        print("\n".join(summary_lines(dataset.manifest, out=args.out)))
        print(f"manifest    {manifest_path}")
    return 0


def summary_lines(manifest: dict[str, Any], *, out: Path) -> list[str]:
    """What each curation step did, one line per step, as the command prints it."""
    steps, splits = manifest["steps"], manifest["splits"]
    lines = [f"role        {manifest['role']} (step types: {', '.join(manifest['config']['step_types'])})"]
    for name, counts in manifest["sources"].items():
        figures = ", ".join(
            f"{key.replace('_', ' ')} {value}" for key, value in counts.items() if isinstance(value, int)
        )
        lines.append(f"source      {name}: {figures}")
    pii = steps["pii"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in pii["matches"].items())
    lines.append(f"pii         {pii['examples']} examples scrubbed" + (f" ({kinds})" if kinds else ""))
    dedup = steps["deduplication"]
    lines.append(
        f"dedup       {steps['collected']} -> {dedup['kept']} (exact {dedup['exact_duplicates']}, near "
        f"{dedup['near_duplicates']}; {dedup['near_identical_other_target']} near-identical with another target kept)"
    )
    for step_type, clusters in steps["clusters"].items():
        sizes = clusters["sizes"]
        lines.append(f"clusters    {step_type}: {clusters['k']} (sizes {sizes[-1]}-{sizes[0]})")
    balance = steps["balance"]
    classes = sum(len(labels) for labels in balance["oversampled"].values())
    floors = ", ".join(f"{step} {floor}" for step, floor in balance["floor"].items())
    lines.append(f"balance     floor {floors}: {classes} classes oversampled, +{balance['added']} train examples")
    for split, summary in splits.items():
        count = sum(len(labels) for labels in summary["classes"].values())
        lines.append(f"{split:<11} {summary['examples']} examples, {count} classes, sha256 {summary['sha256'][:16]}")
    lines.append(f"sha256      {manifest['sha256']}")
    lines.append(f"wrote       {out}/{{train,dev,test}}.jsonl")
    return lines


def _train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agentgraph.distill.train import DistillSettings, train_router_slm
    from agentgraph.graphs.customer_support import CUSTOMER_SUPPORT_INTENTS, SupportExtraction

    lora = {"rank": args.lora_rank, "alpha": args.lora_alpha,
            "target_modules": args.lora_targets and [name.strip() for name in args.lora_targets.split(",")]}  # fmt: skip
    lora = {k: v for k, v in lora.items() if v is not None}
    options = {
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "label_style": args.label_style, "max_minutes": args.max_minutes, "checkpoint_every": args.checkpoint_every,
        "eval_every": args.eval_every, "eval_examples": args.eval_examples, "seed": args.seed,
        "num_threads": args.num_threads, "bf16": args.bf16, "describe_schema": args.describe_schema,
        "lora": lora if args.lora or lora else None,
    }  # fmt: skip
    try:
        settings = DistillSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise AgentGraphError(f"invalid options: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    if args.role == "route":
        result = train_router_slm(
            args.data,
            output_dir=args.out,
            base=args.base,
            settings=settings,
            resume=args.resume,
            overwrite=args.overwrite,
            descriptions=CUSTOMER_SUPPORT_INTENTS,
        )
    else:
        from agentgraph.distill.extract import import_schema, train_extractor_slm

        schema = import_schema(args.schema) if args.schema else SupportExtraction
        result = train_extractor_slm(args.data, output_dir=args.out, schema=schema, base=args.base, settings=settings,
                                     resume=args.resume, overwrite=args.overwrite)  # fmt: skip
    manifest = result.manifest
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    for point in manifest["learning_curve"]:
        accuracy = "-" if point["dev_accuracy"] is None else f"{point['dev_accuracy']:.3f}"
        loss = "-" if point["loss"] is None else f"{point['loss']:.4f}"
        print(
            f"step {point['step']:>5}  examples {point['examples']:>6}  {point['train_seconds']:>7.0f} s  loss {loss:>7}  dev accuracy {accuracy}"
        )
    stopped = " (stopped at the time limit)" if manifest["stopped_early"] else ""
    print(f"trained     {manifest['steps']}/{manifest['total_steps']} steps in {manifest['training_seconds'] / 60:.1f} min "
          f"({manifest['cpu_seconds'] / 60:.1f} CPU min){stopped}")  # fmt: skip
    print(f"dataset     sha256 {manifest['dataset']['sha256']}")
    if manifest["artifact"] == "lora_adapter":
        print(f"adapter     {manifest['trained_parameters']:,} trained parameters on {manifest['base_model']}")
    print(f"wrote       {result.output_dir} (load it with TransformersSLM, serve it with `agentgraph slm serve --model`; "
          "gate it with `agentgraph distill gate`)")  # fmt: skip
    return 0


def _merge(args: argparse.Namespace) -> int:
    from agentgraph.distill.train import merge_adapter

    output = merge_adapter(args.model, args.out, overwrite=args.overwrite)
    print(
        f"wrote       {output} (a whole model: load it with TransformersSLM, serve it with `agentgraph slm serve --model`)"
    )
    return 0


def _gate(args: argparse.Namespace) -> int:
    from agentgraph.classifier import is_classifier_folder
    from agentgraph.distill.gate import DEFAULT_THRESHOLD, gate_router, promote
    from agentgraph.distill.train import read_manifest
    from agentgraph.graphs.customer_support import CUSTOMER_SUPPORT_INTENTS

    if is_classifier_folder(args.model):
        return _gate_classifier(args)
    if args.threshold is None:
        args.threshold = DEFAULT_THRESHOLD
    if read_manifest(args.model).get("role") == "extract":
        from agentgraph.distill.extract import gate_extractor

        extraction = gate_extractor(args.model, args.data, threshold=args.threshold, limit=args.limit,
                                    base=not args.no_base, base_limit=args.base_limit)  # fmt: skip
        print(extraction.model_dump_json(indent=2) if args.json else "\n".join(extraction_gate_lines(extraction)))
        if args.promote:
            from agentgraph.commands.models import open_registry

            promote(args.model, extraction)
            open_registry(args.registry).promote("extract", args.model)
            print(f"promoted    {args.model} (serves extract from now on)")
        return 0
    report = gate_router(
        args.model, args.data, threshold=args.threshold, limit=args.limit, dev_limit=args.dev_limit,
        base=not args.no_base, base_limit=args.base_limit, target_accuracy=args.target_accuracy,
        max_rejection=args.max_rejection, descriptions=CUSTOMER_SUPPORT_INTENTS,
    )  # fmt: skip
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print("\n".join(gate_lines(report)))
    if args.promote:
        from agentgraph.commands.models import open_registry

        promote(args.model, report)  # raises PromotionRefusedError (exit 2) when refused
        open_registry(args.registry).promote("router", args.model)
        print(f"promoted    {args.model} (serves router from now on, with the calibration and gate fitted here)")
    return 0


def _gate_classifier(args: argparse.Namespace) -> int:
    """Gate a retrained classifier on labelled rows against the serving one; ``--promote`` registers it for router."""
    from agentgraph.commands.models import open_registry
    from agentgraph.datasets import read_records
    from agentgraph.distill.gate import (
        CLASSIFIER_MAX_ERROR_RISE,
        CLASSIFIER_MIN_ACCURACY,
        PromotionRefusedError,
        gate_classifier,
    )
    from agentgraph.errors import DatasetError

    if args.rows is None:
        raise AgentGraphError(f"{args.model} is a classifier: gate it on held-out labelled rows with --rows FILE.jsonl")
    try:
        rows = [(str(record["text"]), str(record["label"])) for record in read_records(args.rows)]
    except KeyError as missing:
        raise DatasetError(f'{args.rows}: every row needs "text" and "label"; one has no {missing}') from None
    registry = open_registry(args.registry)
    serving = registry.current("router")
    current = args.current or (None if serving is None else Path(serving.path))
    try:
        report = gate_classifier(
            args.model, rows, current=current,
            min_accuracy=CLASSIFIER_MIN_ACCURACY if args.threshold is None else args.threshold,
            max_error_rise=CLASSIFIER_MAX_ERROR_RISE if args.max_error_rise is None else args.max_error_rise,
        )  # fmt: skip
    except PromotionRefusedError as refused:
        if refused.report is not None:
            print(classifier_gate_text(refused.report, as_json=args.json))
        raise
    print(classifier_gate_text(report, as_json=args.json))
    if args.promote:
        registry.promote("router", args.model)
        print(f"promoted    {args.model} (serves router from now on)")
    return 0


def classifier_gate_text(report: Any, *, as_json: bool) -> str:
    """A classifier's gate report as the command prints it: the rows, each classifier and the decision, or JSON."""
    if as_json:
        return str(report.model_dump_json(indent=2))
    lines = [f"rows        {report.test_rows} held-out labelled requests (sha256 {report.dataset_sha256[:16]})"]
    for name, side in (("candidate", report.candidate), ("current", report.current)):
        if side is not None:
            lines.append(f"{name:<11} coverage {100 * (side.coverage or 0.0):.2f}%, "
                         f"right among answered {100 * (side.selective_accuracy or 0.0):.2f}%")  # fmt: skip
    lines.append(f"decision    {report.decision}: {report.reason}")
    return "\n".join(lines)


def _agree(args: argparse.Namespace) -> int:
    from agentgraph.distill.agreement import backend_agreement
    from agentgraph.slm import VLLMSLM, TransformersSLM
    from agentgraph.slm.models import is_adapter_folder

    # `slm serve --model ADAPTER` serves an adapter under its folder name, beside its base.
    served = args.served_model or (args.model.name if is_adapter_folder(args.model) else None)
    report = backend_agreement(args.model, TransformersSLM(args.model), VLLMSLM(args.slm_url, served),
                               data_dir=args.data, limit=args.limit or None)  # fmt: skip
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    print(f"rows        {report.rows} held-out {report.role} requests")
    print(f"agreement   {100 * report.same_answer:.2f}% same answers (embedded vs vLLM)")
    if report.probability_gap_max is not None:
        print(
            f"confidence  |p_embedded - p_vllm| of the label: mean {report.probability_gap_mean:.4f}, max {report.probability_gap_max:.4f}"
        )
    for name, accuracy in report.accuracy.items():
        if report.role == "extract":
            print(f"{name:<11} entity exact match {100 * accuracy:.2f}% against the targets")
            continue
        curve = ", ".join(
            f"{100 * acc:.2f}% at {100 * float(c):.0f}%"
            for c, acc in report.selective_accuracy_at_coverage[name].items()
        )
        print(f"{name:<11} accuracy {100 * accuracy:.2f}% against the labels; most confident: {curve}")
    print("latency     p50 " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in report.latency_ms_p50.items()))
    for row in report.disagreements:
        print(f"differs     {row}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    from agentgraph.commands.models import open_registry
    from agentgraph.distill.gate import DEFAULT_THRESHOLD
    from agentgraph.graphs.customer_support.bootstrap import (
        DEFAULT_GATE_ROWS,
        DEFAULT_TRAIN_MINUTES,
        bootstrap_customer_support,
    )

    registry = open_registry(args.registry)
    report = bootstrap_customer_support(
        registry, work_dir=args.work_dir or registry.folder / "bootstrap", base=args.base,
        train_minutes=args.train_minutes or DEFAULT_TRAIN_MINUTES, epochs=args.epochs,
        gate_rows=DEFAULT_GATE_ROWS if args.gate_rows is None else args.gate_rows or None,
        threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
        progress=(lambda line: None) if args.json else print,
    )  # fmt: skip
    status = 0 if report.promoted else 2  # as `distill gate --promote` exits on a refusal
    if args.json:
        print(report.model_dump_json(indent=2))
        return status
    print("\n".join(extraction_gate_lines(report.gate)))
    total = sum(report.minutes.values())
    print(f"took        {total:.1f} min (" + ", ".join(f"{k} {v:.1f}" for k, v in report.minutes.items()) + ")")
    if report.promoted:
        print(
            f"promoted    {report.model} serves extract from the next graph built (`agentgraph run customer-support`)"
        )
    print(f"router      {report.router} (what the example routes with)")
    return status


def gate_lines(report: Any) -> list[str]:
    """The gate report as the command prints it: one line per model, then the decision."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [
        f"data        {report.data_dir} (dev {report.dev_rows}, test {report.test_rows}; sha256 {report.dataset_sha256[:16]})"
    ]
    for name, side in (("student", report.student), ("base", report.base)):
        if side is None:
            continue
        e = side.evaluation
        lines.append(
            f"{name:<11} {side.model}: accuracy {pct(e.accuracy)}, coverage {pct(e.coverage)} at gate "
            f"{side.gate_threshold:.3f}, selective accuracy {pct(e.selective_accuracy)}, "
            f"latency p50 {e.latency_ms_p50:.0f} ms p95 {e.latency_ms_p95:.0f} ms ({e.in_scope} rows)"
        )
    lines.append(f"decision    {report.decision}: {report.reason}")
    return lines


def extraction_gate_lines(report: Any) -> list[str]:
    lines = [f"data        {report.data_dir} (test {report.test_rows}; sha256 {report.dataset_sha256[:16]})"]
    for name, e in (("student", report.student), ("base", report.base)):
        if e is None:
            continue
        with_entity = (
            "-" if e.entity_exact_match_with_entity is None else f"{100 * e.entity_exact_match_with_entity:.2f}%"
        )
        intent = "" if e.intent_accuracy is None else f", intent {100 * e.intent_accuracy:.2f}%"
        lines.append(
            f"{name:<11} schema-valid {100 * e.schema_valid:.2f}%, entity exact match {100 * e.entity_exact_match:.2f}% "
            f"({with_entity} of rows with an entity), exact match {100 * e.exact_match:.2f}%{intent}, "
            f"latency p50 {e.latency_ms_p50:.0f} ms p95 {e.latency_ms_p95:.0f} ms ({e.rows} rows)"
        )
    lines.append(f"decision    {report.decision}: {report.reason}")
    return lines


RETRAIN_EXIT_STATUS = 3
"""``agentgraph distill drift`` exits with it when a retrain is signalled (2 is an error, as for every command)."""


def _drift(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from agentgraph.distill.drift import build_dataset_reference, cached_reference, default_encoder, monitor_drift
    from agentgraph.distill.train import load_route_dataset

    store = open_traces(args.traces, "give the store the router logs its decisions to")
    try:
        dataset = load_route_dataset(args.data)
        encoder = default_encoder()
        reference = None if args.rebuild_reference else cached_reference(dataset.sha256, args.split)
        if reference is None:
            from agentgraph.classifier import IntentClassifier
            from agentgraph.graphs.customer_support import support_router_path
            from agentgraph.routing import ClassifierStrategy, Router

            classifier = IntentClassifier.load(args.classifier or support_router_path(), encoder=encoder)
            router = Router([ClassifierStrategy(classifier)])
            reference = build_dataset_reference(dataset, split=args.split, router=router, encoder=encoder)
        since = datetime.now(UTC) - timedelta(hours=args.hours) if args.hours else None
        report = monitor_drift(store, reference, node=args.node, window=args.window, since=since, encoder=encoder)
    finally:
        store.close()
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print("\n".join(drift_lines(report, reference.info)))
    return RETRAIN_EXIT_STATUS if report.retrain else 0


def drift_lines(report: Any, reference: Any) -> list[str]:
    """The drift report as the command prints it: the window, one line per signal, then the verdict."""
    m, t = report.metrics, report.thresholds
    psi = "-" if m.confidence_psi is None else f"{m.confidence_psi:.3f}"
    mean = "-" if m.confidence_mean is None else f"{m.confidence_mean:.3f}"
    lines = [
        (
            f"window      {report.window} route decisions of {report.node}, "
            f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"
        ),
        (
            f"reference   dataset sha256 {(reference.dataset_sha256 or '-')[:16]}: {reference.train_inputs} train inputs, "
            f"baseline from {reference.baseline_source}"
        ),
        (
            f"scope       {100 * m.out_of_scope_rate:.1f}% out of scope (baseline {100 * m.baseline_out_of_scope_rate:.1f}%; "
            f"retrain above +{100 * t.out_of_scope_rate_increase:.0f} points)"
        ),
        f"confidence  PSI {psi} (retrain above {t.confidence_psi:g}); mean {mean} (baseline {m.baseline_confidence_mean:.3f})",
        (
            f"embeddings  distance ratio {m.embedding_distance_ratio:.2f} (retrain above {t.embedding_distance_ratio:g}); "
            f"novel inputs {100 * m.novel_input_share:.1f}% (retrain above {100 * t.novel_input_share:.0f}%)"
        ),
    ]
    if report.retrain:
        crossed = ", ".join(report.crossed)
        lines.append(f"RETRAIN     {crossed} crossed: rebuild the dataset from recent traces and retrain the router")
    elif not report.enough_data:
        lines.append(f"ok          too few decisions to judge ({report.window} < {t.min_decisions}); no signal")
    else:
        lines.append("ok          no threshold crossed")
    return lines
