"""``agentgraph distill``: turn the frontier LLM's logged calls into training data for a small model.

``agentgraph distill dataset --role route --out DIR [--traces STORE] [--import FILE ...] [--customer-support [CSV]]``
curates a training set for one role (``route`` or ``extract``) from the
accepted calls in a trace store (the SQLite file an
:class:`~agentgraph.distill.traces.LLMCallRecorder` writes), labelled CSV/JSONL
files and the Bitext customer-support data (its own train/dev/test split kept);
it scrubs PII, de-duplicates, clusters, splits and balances
(:mod:`agentgraph.distill.dataset`), writes ``train.jsonl``, ``dev.jsonl``,
``test.jsonl`` and ``manifest.json`` into DIR and prints what each step did;
``--json`` prints the manifest instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agentgraph.errors import AgentGraphError


ROLES = ("route", "extract")
"""As :data:`agentgraph.distill.dataset.ROLES`, named here so that building the parser imports no numpy."""


def register(groups: argparse._SubParsersAction) -> None:
    distill = groups.add_parser("distill", help="distil the LLM's work into a small model: dataset")
    commands = distill.add_subparsers(dest="distill_command", required=True, metavar="DISTILL_COMMAND")
    dataset = commands.add_parser("dataset", help="curate train/dev/test splits for one role from traces and labelled files")
    dataset.add_argument("--role", choices=ROLES, required=True, help="route: a label per input; extract: a JSON object")
    dataset.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.jsonl and manifest.json")
    dataset.add_argument("--traces", type=Path, help="a trace store (SQLite) written by LLMCallRecorder")
    dataset.add_argument("--import", dest="imports", type=Path, action="append", default=[], metavar="FILE",
                         help="a labelled CSV or JSONL file (repeatable)")  # fmt: skip
    dataset.add_argument("--text-column", help="of imported files (default: the first of text, input, instruction, request)")
    dataset.add_argument("--label-column", help="of imported files (default: route: label or intent; extract: target or label)")
    dataset.add_argument("--customer-support", nargs="?", const=True, metavar="CSV",
                         help="add the Bitext customer-support data, its split kept (default file: "
                              "$AGENTGRAPH_CUSTOMER_SUPPORT_CSV, else ../shared/data/bitext-customer-support/train.csv)")  # fmt: skip
    dataset.add_argument("--step-type", dest="step_types", action="append", metavar="TYPE",
                         help="trace step types to learn from (repeatable; default: the role's own)")  # fmt: skip
    dataset.add_argument("--seed", type=int, help="split, cluster and oversampling seed (default: the benchmarks')")
    dataset.add_argument("--dev-fraction", type=float, default=0.1, help="of examples without a fixed split (default 0.1)")
    dataset.add_argument("--test-fraction", type=float, default=0.1, help="of examples without a fixed split (default 0.1)")
    dataset.add_argument("--dedup-threshold", type=float, help="cosine at which two inputs count as one (default 0.98)")
    dataset.add_argument("--clusters", type=int, help="k-means clusters per step type (default: sqrt(n/2), at most 32)")
    dataset.add_argument("--class-floor", type=int, help="oversample train classes below this many (default: half the median; 0: off)")
    dataset.add_argument("--label-field", help="the key of a JSON target that holds its class (default: intent)")
    dataset.add_argument("--json", action="store_true", help="print the manifest as JSON")
    dataset.set_defaults(handler=_dataset)


def _dataset(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agentgraph.distill.dataset import (
        DatasetConfig,
        build_dataset,
        customer_support_examples,
        file_examples,
        trace_examples,
        write_dataset,
    )
    from agentgraph.distill.traces import SQLiteTraceStore

    if not (args.traces or args.imports or args.customer_support):
        raise AgentGraphError("nothing to curate: give --traces STORE, --import FILE or --customer-support")
    options = {
        "seed": args.seed, "dedup_threshold": args.dedup_threshold, "clusters": args.clusters,
        "class_floor": args.class_floor, "label_field": args.label_field, "step_types": args.step_types,
    }  # fmt: skip
    fractions = {"train": 1 - args.dev_fraction - args.test_fraction, "dev": args.dev_fraction, "test": args.test_fraction}
    try:
        config = DatasetConfig(role=args.role, fractions=fractions, **{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise AgentGraphError(f"invalid options: {exc.errors()[0]['msg']}") from exc

    sources = []
    if args.traces:
        if not args.traces.is_file():
            raise AgentGraphError(f"no trace store at {args.traces}; record calls with LLMCallRecorder first")
        store = SQLiteTraceStore(args.traces)
        try:
            sources.append(trace_examples(store, role=config.role, step_types=config.step_types, label_field=config.label_field))
        finally:
            store.close()
    for path in args.imports:
        sources.append(
            file_examples(path, role=config.role, text_column=args.text_column, label_column=args.label_column,
                          label_field=config.label_field)
        )  # fmt: skip
    if args.customer_support:
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
        figures = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items() if isinstance(value, int))
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
