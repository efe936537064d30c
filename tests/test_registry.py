"""The model registry: promotion refuses what its gate did not accept, the graph loads what was promoted,
rollback restores what served before, and every switch is a decision in the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentgraph.cli import main
from agentgraph.distill.registry import ChangedArtifactError, ModelRegistry, UnpromotedArtifactError
from agentgraph.distill.train import DistillError
from agentgraph.errors import ConfigError
from agentgraph.records.decisions import JSONLDecisionLog
from agentgraph.slm.models import default_model_folder

TICKET_SCHEMA = "agentgraph.graphs.customer_support.ticket:SupportTicket"


def artifact(folder: Path, *, decision: str | None = "accepted", schema: str = TICKET_SCHEMA, weights: bool = False):
    """An extraction artifact as ``distill train`` and ``distill gate --promote`` leave it.

    With ``weights``, its model files are the packaged model's (linked, not copied), so it loads and serves.
    """
    folder.mkdir(parents=True)
    if weights:
        for file in default_model_folder().iterdir():
            (folder / file.name).symlink_to(file)
    manifest = {
        "role": "extract", "schema": schema, "base_model": "SmolLM2-135M-Instruct",
        "dataset": {"sha256": f"sha-of-{folder.name}", "folder": "/data/extract"},
        "schema_enforcer": {"prompt": "schema_enforcer.v1", "prompt_version": 1, "describe_schema": True},
    }  # fmt: skip
    if decision is not None:
        manifest["promotion"] = {"decision": decision, "reason": f"gate said {decision}", "agreement": 0.99,
                                 "threshold": 0.92}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.mark.parametrize("decision", [None, "refused"])
def test_an_artifact_its_gate_did_not_accept_is_refused_unless_forced(tmp_path, decision):
    registry = ModelRegistry(tmp_path / "registry")
    folder = artifact(tmp_path / "candidate", decision=decision)
    with pytest.raises(UnpromotedArtifactError, match="is not promoted"):
        registry.promote("extract", folder)
    assert registry.current("extract") is None and not registry.path.exists()
    entry = registry.promote("extract", folder, force=True, reason="a person checked it")
    assert entry.forced and entry.reason == "a person checked it" and registry.current("extract") == entry


def test_rollback_restores_what_served_before_and_each_switch_is_logged(tmp_path):
    log = JSONLDecisionLog(tmp_path / "decisions.jsonl")
    registry = ModelRegistry(tmp_path / "registry", decision_log=log)
    first, second = artifact(tmp_path / "v1"), artifact(tmp_path / "v2")
    registry.promote("extract", first)
    registry.promote("extract", second)
    assert registry.current("extract").path == str(second.resolve())
    assert registry.current("extract").lineage["dataset_sha256"] == "sha-of-v2"
    assert registry.rollback("extract").path == str(first.resolve())
    assert ModelRegistry(tmp_path / "registry").current("extract").path == str(first.resolve()), "it is on disk"
    assert registry.rollback("extract") is None, "before the first promotion the default served"
    with pytest.raises(DistillError, match="nothing to roll back"):
        registry.rollback("extract")
    switches = [(d.kind, d.output, d.outcome) for d in log.decisions(node="model_registry")]
    assert switches == [
        ("promote", str(first.resolve()), "promoted"), ("promote", str(second.resolve()), "promoted"),
        ("rollback", str(first.resolve()), "promoted"), ("rollback", None, "default"),
    ]  # fmt: skip


def test_an_artifact_changed_after_its_promotion_or_gone_is_refused_at_load(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    folder = artifact(tmp_path / "v1")
    registry.promote("extract", folder)
    assert registry.resolve("extract").path == str(folder.resolve())
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "steps": 99}))  # retrained in place
    with pytest.raises(ChangedArtifactError, match="changed since it was promoted"):
        registry.resolve("extract")
    (folder / "manifest.json").unlink()
    with pytest.raises(DistillError, match="is gone"):
        registry.resolve("extract")


def test_the_models_command_promotes_lists_shows_and_rolls_back(tmp_path, capsys):
    registry = str(tmp_path / "registry")
    refused, accepted = artifact(tmp_path / "refused", decision="refused"), artifact(tmp_path / "accepted")
    assert main(["models", "promote", "extract", str(refused), "--registry", registry]) == 2
    assert "is not promoted (gate said refused)" in capsys.readouterr().err
    assert main(["models", "promote", "extract", str(accepted), "--registry", registry]) == 0
    assert main(["models", "list", "--registry", registry, "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["extract"]["path"] == str(accepted.resolve())
    assert main(["models", "show", "extract", "--registry", registry]) == 0
    assert "sha-of-accepted" in capsys.readouterr().out
    assert main(["models", "rollback", "extract", "--registry", registry]) == 0
    assert "default (nothing promoted)" in capsys.readouterr().out


def test_the_example_graph_serves_the_promoted_extractor_and_the_default_without_one(tmp_path, embedded_slm):
    from agentgraph.graphs.customer_support import CustomerSupportParts

    registry = ModelRegistry(tmp_path / "data" / "models")
    request = {"request": "where is order 4587345?", "decisions": []}

    def extract_decision(parts: CustomerSupportParts):
        result = parts.nodes()["extract"](request, {})
        return result["ticket"], result["decisions"][-1]

    default = CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm)
    ticket, decision = extract_decision(default)
    assert default.extraction_artifact is None and decision.model == embedded_slm.model_name
    assert ticket.order_id == "4587345"

    promoted = artifact(tmp_path / "extractor-v1", weights=True)
    registry.promote("extract", promoted)
    served = CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm)
    ticket, decision = extract_decision(served)
    assert served.extraction_artifact["slm"].folder == promoted, "the artifact's own model serves extract"
    assert served.extraction_artifact["slm"].dtype == embedded_slm.dtype, "it computes as the serving SLM does"
    assert decision.model == "extractor-v1" and ticket.order_id == "4587345"

    registry.rollback("extract")
    assert CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm).extraction_artifact is None


def test_the_example_graph_refuses_a_promoted_extractor_of_another_schema(tmp_path, embedded_slm):
    from agentgraph.graphs.customer_support import CustomerSupportParts

    other = artifact(tmp_path / "other", schema="agentgraph.graphs.customer_support.distillation:SupportExtraction",
                     weights=True)  # fmt: skip
    ModelRegistry(tmp_path / "data" / "models").promote("extract", other)
    with pytest.raises(ConfigError, match="fills SupportExtraction; this graph's extract node fills SupportTicket"):
        CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm)


def test_the_example_graph_refuses_an_extractor_promoted_for_its_router(tmp_path, embedded_slm):
    from agentgraph.graphs.customer_support import CustomerSupportParts

    ModelRegistry(tmp_path / "data" / "models").promote("router", artifact(tmp_path / "extractor"))
    with pytest.raises(ConfigError, match="is a distilled 'extract' model, not a router"):
        CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm)


@pytest.mark.slow
def test_a_retrained_classifier_gated_against_the_serving_one_is_promoted_without_force(
    tmp_path, support_splits, capsys
):
    from agentgraph.classifier import IntentClassifier, SentenceEncoder
    from agentgraph.distill.gate import PromotionRefusedError, gate_classifier

    encoder = SentenceEncoder(precision="int8")
    intents = ("cancel_order", "track_order", "get_refund", "payment_issue", "recover_password", "get_invoice")
    train = [r for r in support_splits["train"] if r.intent in intents]
    held_out = [(r.text, r.intent) for r in support_splits["dev"] if r.intent in intents]
    rows = tmp_path / "held-out.jsonl"
    rows.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in held_out))

    def classifier(per_intent: int, name: str) -> Path:
        rows = [r for intent in intents for r in [r for r in train if r.intent == intent][:per_intent]]
        trained = IntentClassifier.train([r.text for r in rows], [r.intent for r in rows], encoder=encoder,
                                         max_gate_rejection=0.9)  # fmt: skip
        return trained.save(tmp_path / name)

    serving, retrained = classifier(5, "router-v1"), classifier(100, "router-v2")
    registry = ModelRegistry(tmp_path / "models")
    registry.promote("router", serving, force=True, reason="the cold start")
    # The command gates against what serves router in the registry, then registers the candidate when accepted.
    gate = ["distill", "gate", "--model", str(retrained), "--rows", str(rows), "--registry", str(registry.folder)]
    assert main([*gate, "--promote"]) == 0
    printed = capsys.readouterr().out
    assert f"rows        {len(held_out)} held-out labelled requests" in printed
    assert "candidate   coverage" in printed and "current     coverage" in printed
    assert "decision    accepted" in printed and f"promoted    {retrained}" in printed
    entry = registry.current("router")
    assert entry.path == str(retrained.resolve()) and not entry.forced
    figures = json.loads((retrained / "manifest.json").read_text())["promotion"]
    assert entry.lineage["gate"]["coverage"] == figures["coverage"] >= figures["current_coverage"]
    assert IntentClassifier.load(retrained).labels, "the gate's record leaves the classifier loadable"

    # The old one, gated against the new: refused with the figures shown, and never registered.
    assert main(["distill", "gate", "--model", str(serving), "--rows", str(rows), "--registry", str(registry.folder),
                 "--promote"]) == 2  # fmt: skip
    shown = capsys.readouterr()
    assert "decision    refused: coverage" in shown.out and "is not promoted" in shown.err
    assert registry.current("router").path == str(retrained.resolve())
    with pytest.raises(PromotionRefusedError, match="is not promoted") as refused:
        gate_classifier(serving, held_out, current=retrained)
    assert refused.value.report.candidate.coverage < refused.value.report.current.coverage
    with pytest.raises(UnpromotedArtifactError, match="coverage"):
        registry.promote("router", serving)

    rows.write_text(json.dumps({"text": "where is my parcel?", "intent": "track_order"}) + "\n")
    assert main(gate) == 2
    assert 'every row needs "text" and "label"; one has no \'label\'' in capsys.readouterr().err
    assert main(gate[:4] + gate[6:]) == 2
    assert "is a classifier: gate it on held-out labelled rows with --rows" in capsys.readouterr().err


def test_promotions_from_several_processes_at_once_are_all_kept(tmp_path):
    import subprocess
    import sys

    folder = artifact(tmp_path / "candidate")
    registry = ModelRegistry(tmp_path / "registry")
    # Each process promotes the artifact 10 times for its own role and for one role they all share; without a
    # lock across processes, two read-change-write cycles at once both write what they read and one is lost.
    code = (
        "import sys\n"
        "from agentgraph.distill.registry import ModelRegistry\n"
        "registry, worker = ModelRegistry(sys.argv[1]), sys.argv[2]\n"
        "for _ in range(10):\n"
        "    registry.promote('shared', sys.argv[3])\n"
        "    registry.promote(f'role-{worker}', sys.argv[3])\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(registry.folder), str(worker), str(folder)])
        for worker in range(6)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0] * 6
    roles = registry.read().roles
    assert len(roles["shared"].entries) == 60
    assert all(len(roles[f"role-{worker}"].entries) == 10 for worker in range(6))
