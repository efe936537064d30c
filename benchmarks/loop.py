"""Loop engine benchmark: the evaluator's verdicts on hand-labelled loop observations, by the SLM and the classifier.

Run: ``python benchmarks/loop.py [--judges classifier,slm] [--min-confidence 0.5] [--gates 0.6,0.7,0.8,0.9]
[--threads 1] [--json]``

``benchmarks/data/loop_observations.jsonl`` holds loop states written for this
project (goal, plan, steps done, the latest result and whether it failed), each
with the verdict it calls for among those the guards leave open: plans still
running whose result fits (``continue``), shows the plan is wrong (``replan``) or
needs a person, a permission or a payment (``escalate``); exhausted plans that
met the goal (``done``) or did not (``replan``, ``escalate``); failed steps
(``replan``, ``escalate``). It is the measurement set only: the verdict
classifier is trained on other states (``agentgraph/nodes/data/loop_verdicts.jsonl``),
freshly here, so the report gives its training time and cross-fitted accuracy.

The evaluator node (:func:`create_evaluator`) judges every case once with each
judge in ``--judges``: ``classifier`` (the trained verdict classifier) and
``slm`` (the embedded SLM); from those same probabilities the report gives, at
``--min-confidence``: accuracy per verdict and overall, the confusion matrix
(rows: the right verdict, columns: the evaluator's), the share escalated by
low confidence and the accuracy of the verdicts that were not; and, for each
gate in ``--gates``, the risk/coverage trade-off. Two rules on the same cases
frame it: the fixed rule "continue when allowed, else escalate", and the
position rule (``continue`` while steps remain, ``done`` once the plan is
exhausted, ``replan`` after a failure), which uses the state alone.
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from agentgraph.nodes.loop import LabelledObservation, allowed_verdicts, create_evaluator
from agentgraph.nodes.loop_verdicts import VerdictClassifier, VerdictJudge, train_verdict_classifier
from agentgraph.slm import SLM

OBSERVATIONS = Path(__file__).parent / "data" / "loop_observations.jsonl"
VERDICTS = ("continue", "replan", "done", "escalate")


def read_cases(path: Path = OBSERVATIONS) -> list[LabelledObservation]:
    return [LabelledObservation.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def fixed_rule(case: LabelledObservation) -> str:
    return "continue" if "continue" in allowed_verdicts(case.state()) else "escalate"


def position_rule(case: LabelledObservation) -> str:
    labels = allowed_verdicts(case.state())
    return next(label for label in ("continue", "done", "replan") if label in labels)


def judgements(judge: SLM | VerdictJudge, cases: list[LabelledObservation]) -> list[tuple[str, float]]:
    """The judge's own verdict and its probability for each case (no confidence gate)."""
    evaluate = create_evaluator(judge, min_confidence=0.0)
    decisions = [evaluate(case.state(), {})["decisions"][0] for case in cases]
    return [(d.metadata["slm_verdict"], d.confidence) for d in decisions]


def gated(judgements: list[tuple[str, float]], min_confidence: float) -> list[str]:
    return ["escalate" if confidence < min_confidence else verdict for verdict, confidence in judgements]


def scores(cases: list[LabelledObservation], predicted: list[str]) -> dict:
    truth = [case.verdict for case in cases]
    per_verdict = {
        v: round(sum(p == t == v for p, t in zip(predicted, truth, strict=True)) / truth.count(v), 3)
        for v in VERDICTS
        if v in truth
    }
    confusion = Counter(zip(truth, predicted, strict=True))
    return {
        "accuracy": round(sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth), 3),
        "per_verdict": per_verdict,
        "confusion": {t: {p: confusion[t, p] for p in VERDICTS} for t in VERDICTS},
    }


def gate_report(cases: list[LabelledObservation], judgements: list[tuple[str, float]], min_confidence: float) -> dict:
    low = [confidence < min_confidence for _, confidence in judgements]
    kept = [verdict == case.verdict for (verdict, _), case, out in zip(judgements, cases, low, strict=True) if not out]
    return {
        "min_confidence": min_confidence,
        "accuracy": scores(cases, gated(judgements, min_confidence))["accuracy"],
        "escalated_by_low_confidence": round(sum(low) / len(low), 3),
        "accuracy_not_escalated": round(sum(kept) / len(kept), 3) if kept else None,
    }


def judge_report(cases: list[LabelledObservation], judge: SLM | VerdictJudge, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    judged = judgements(judge, cases)
    return {
        **scores(cases, gated(judged, args.min_confidence)),
        **gate_report(cases, judged, args.min_confidence),
        "ungated_accuracy": scores(cases, [verdict for verdict, _ in judged])["accuracy"],
        "ms_per_case": round(1000 * (time.perf_counter() - started) / len(cases), 1),
        "risk_coverage": [gate_report(cases, judged, float(g)) for g in args.gates.split(",") if g],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OBSERVATIONS)
    parser.add_argument("--judges", default="classifier,slm", help="which evaluators to measure: classifier, slm")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="the evaluator's gate for the main figures")
    parser.add_argument("--gates", default="0.6,0.7,0.8,0.9", help="further gates for the risk/coverage trade-off")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the embedded SLM")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cases = read_cases(args.data)
    report: dict = {"cases": len(cases), "verdicts": dict(Counter(case.verdict for case in cases))}
    judges = [name.strip() for name in args.judges.split(",") if name.strip()]
    if "classifier" in judges:
        started = time.perf_counter()
        classifier = train_verdict_classifier()
        metrics = classifier.manifest.metrics
        report["classifier"] = {
            "training_examples": metrics["examples"],
            "training_seconds": round(time.perf_counter() - started, 1),
            "cross_fitted_class_accuracy": round(metrics["out_of_fold_accuracy"], 3),
            **judge_report(cases, VerdictClassifier(classifier), args),
        }
    if "slm" in judges:
        from agentgraph.slm import TransformersSLM

        slm = TransformersSLM(num_threads=args.threads)
        report["slm"] = {"model": slm.model_name, **judge_report(cases, slm, args)}
    report["fixed_rule"] = scores(cases, [fixed_rule(case) for case in cases])
    report["position_rule"] = scores(cases, [position_rule(case) for case in cases])
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
