"""Loop engine benchmark: the SLM evaluator's verdicts on hand-labelled loop observations.

Run: ``python benchmarks/loop.py [--min-confidence 0.5] [--gates 0.6,0.7,0.8,0.9] [--threads 1] [--json]``

``benchmarks/data/loop_observations.jsonl`` holds loop states written for this
project (goal, plan, steps done, the latest result and whether it failed), each
with the verdict it calls for among those the guards leave open: plans still
running whose result fits (``continue``), shows the plan is wrong (``replan``) or
needs a person, a permission or a payment (``escalate``); exhausted plans that
met the goal (``done``) or did not (``replan``, ``escalate``); failed steps
(``replan``, ``escalate``). The evaluator node (:func:`create_evaluator`) judges
every case once with the embedded SLM; from those same probabilities the report
gives, at ``--min-confidence``: accuracy per verdict and overall, the confusion
matrix (rows: the right verdict, columns: the evaluator's), the share escalated
by low confidence and the accuracy of the verdicts that were not; and, for each
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
from collections import Counter
from pathlib import Path

from agentgraph.nodes.loop import LabelledObservation, allowed_verdicts, create_evaluator
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


def slm_judgements(slm: SLM, cases: list[LabelledObservation]) -> list[tuple[str, float]]:
    """The SLM's own verdict and its probability for each case (no confidence gate)."""
    evaluate = create_evaluator(slm, min_confidence=0.0)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OBSERVATIONS)
    parser.add_argument("--min-confidence", type=float, default=0.5, help="the evaluator's gate for the main figures")
    parser.add_argument("--gates", default="0.6,0.7,0.8,0.9", help="further gates for the risk/coverage trade-off")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the embedded SLM")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from agentgraph.slm import TransformersSLM

    cases = read_cases(args.data)
    slm = TransformersSLM(num_threads=args.threads)
    judgements = slm_judgements(slm, cases)
    report = {
        "cases": len(cases),
        "verdicts": dict(Counter(case.verdict for case in cases)),
        "model": slm.model_name,
        "slm": {
            **scores(cases, gated(judgements, args.min_confidence)),
            **gate_report(cases, judgements, args.min_confidence),
        },
        "fixed_rule": scores(cases, [fixed_rule(case) for case in cases]),
        "position_rule": scores(cases, [position_rule(case) for case in cases]),
        "risk_coverage": [gate_report(cases, judgements, float(g)) for g in args.gates.split(",") if g],
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
