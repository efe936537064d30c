"""Fine-tuning, gating and promoting a router SLM.

The fast tests train a tiny randomly initialised Llama (two layers of width 64)
with the real SmolLM2 tokenizer and chat template, on a few Bitext requests:
everything else (prompt building, loss, checkpoints, the model folder, the
router, the gate, the CLI) runs for real. The slow test fine-tunes the real
SmolLM2-135M-Instruct on a small dataset and checks it beats the base model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from agentgraph.cli import main
from agentgraph.distill.dataset import (
    CuratedDataset,
    Example,
    content_sha256,
    write_dataset,
)
from agentgraph.distill.extract import ExtractPromptEncoder, gate_extractor, load_extraction_artifact
from agentgraph.distill.gate import (
    PromotionRefusedError,
    gate_router,
    load_router_strategy,
    promote,
)
from agentgraph.distill.train import (
    DistillError,
    DistillSettings,
    LoraSettings,
    RoutePromptEncoder,
    batch_loss,
    common_prefix,
    lists_labels,
    load_route_dataset,
    prompt_labels,
    read_manifest,
    train_router_slm,
)
from agentgraph.graphs.customer_support.bitext import (
    CUSTOMER_SUPPORT_INTENTS,
    load_customer_support,
    split_customer_support,
)
from agentgraph.graphs.customer_support.distillation import SupportExtraction
from agentgraph.nodes.router import Router, SLMStrategy
from agentgraph.slm.models import prepare_model_folder

INTENTS = ("cancel_order", "get_refund", "track_order")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised two-layer Llama with SmolLM2's tokenizer and chat template, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(prepare_model_folder())
    config = LlamaConfig(
        # head_dim 64: vLLM's CPU attention has no kernel for smaller heads, and the model must serve there too.
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _dataset(folder: Path, intents: tuple[str, ...], *, train: int, dev: int, test: int, role: str = "route") -> Path:
    """A dataset of the first Bitext requests of ``intents`` per split, written as `distill dataset` does.

    Route targets are intents; extract targets are SupportExtraction objects (intent plus the entity).
    """
    splits = split_customer_support(load_customer_support())
    counts = {"train": train, "dev": dev, "test": test}
    chosen = {}
    for split, per_intent in counts.items():
        taken: Counter = Counter()
        rows = []
        for row in splits[split]:
            if row.intent in intents and taken[row.intent] < per_intent:
                taken[row.intent] += 1
                entity = {row.entity_type: row.entity_value} if row.entity_type else {}
                target = row.intent if role == "route" else SupportExtraction(intent=row.intent, **entity).model_dump()
                rows.append(
                    Example(id=f"bitext/{split}/{len(rows)}", source="bitext", step_type=role, input=row.text,
                            target=target, label=row.intent)
                )  # fmt: skip
        chosen[split] = rows
    dumped = {split: [e.model_dump(mode="json") for e in rows] for split, rows in chosen.items()}
    write_dataset(CuratedDataset(splits=chosen, manifest={"role": role, "sha256": content_sha256(dumped)}), folder)
    return folder


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("route-data"), INTENTS, train=8, dev=4, test=4)


def _tiny_settings(**overrides) -> DistillSettings:
    values = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "eval_examples": 6, "progress": False, "num_threads": 2,
              "label_style": "codes"}  # fmt: skip
    return DistillSettings(**(values | overrides))


@pytest.mark.parametrize("style", ["codes", "learnt"])
def test_training_prompt_is_the_one_the_router_scores(tiny_model, small_data, style):
    """The encoder's prompt and target ids are what SLM.choose sends the model for SLMStrategy."""
    from transformers import AutoTokenizer

    from agentgraph.slm import TransformersSLM

    shown, intents = prompt_labels(list(INTENTS), style)
    target = "A" if style == "codes" else "cancel_order"
    assert intents[target] == "cancel_order" and len(intents) == 3
    list_labels = lists_labels(style)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder = RoutePromptEncoder(tokenizer, shown, max_input_tokens=64, list_labels=list_labels)
    listed = tokenizer.decode(encoder.prompt_ids("where is my parcel?"))
    # A learnt label set is scored but never listed: the prompt names no label.
    assert ("get_refund" in listed or "- B" in listed) == list_labels
    slm = TransformersSLM(tiny_model)
    seen = {}
    original = slm._score_continuations

    def spy(prefix, continuations):
        seen.update(prefix=prefix, continuations=continuations)
        return original(prefix, continuations)

    slm._score_continuations = spy
    # A control character the router strips, and a request longer than the 64-token budget it cuts to.
    text = "I want to cancel order 12345\x00 right now " + "because it is late " * 20
    verdict = Router([SLMStrategy(slm, shown, max_input_tokens=64, list_labels=list_labels)]).decide(text)
    assert verdict.truncated
    encoded = encoder.encode(text, target)
    assert encoded.prompt == seen["prefix"]
    assert encoded.target == seen["continuations"][target]
    assert tokenizer.decode(encoded.target) == f"{target}<|im_end|>\n"


def test_loss_is_on_label_tokens_only_and_sharing_the_prefix_changes_nothing(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    shown, _ = prompt_labels(list(INTENTS), "names")
    encoder = RoutePromptEncoder(tokenizer, shown, max_input_tokens=64)
    examples = [("cancel my order", "cancel_order"), ("where is parcel 77?", "track_order"),
                ("I need my money back for the broken lamp", "get_refund")]  # fmt: skip
    rows = [encoder.encode(text, label) for text, label in examples]
    for row, (_, label) in zip(rows, examples, strict=True):
        assert row.labels[: len(row.prompt)] == [-100] * len(row.prompt)
        assert row.labels[len(row.prompt) :] == row.target == encoder.target_ids(label)
        assert tokenizer.decode(row.target) == f"{label}<|im_end|>\n"
    shared = common_prefix([row.prompt for row in rows])
    assert 50 < len(shared) < min(len(row.prompt) for row in rows)

    loss, tokens = batch_loss(model, shared, rows, pad_id=tokenizer.pad_token_id)
    assert tokens == sum(len(row.target) for row in rows)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # Reference: transformers' own causal-LM loss with -100 on the prompt, one unpadded row at a time.
    total = (
        sum(
            model(input_ids=torch.tensor([row.input_ids]), labels=torch.tensor([row.labels])).loss * len(row.target)
            for row in rows
        )
        / tokens
    )
    total.backward()
    # (transformers casts logits to float32 for its loss, hence float32 tolerances on float64 weights)
    assert float(loss.detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(ours[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Had the prompt tokens counted, the loss would be another number (a random model predicts them badly).
    unmasked = sum(
        model(input_ids=torch.tensor([row.input_ids]), labels=torch.tensor([row.input_ids])).loss for row in rows
    )
    assert abs(float(unmasked.detach()) / len(rows) - float(loss.detach())) > 1e-3


@pytest.mark.slow  # trains a model
def test_training_writes_a_router_model_folder_with_its_manifest(tiny_model, small_data, tmp_path):
    out = tmp_path / "model"
    result = train_router_slm(small_data, output_dir=out, base=tiny_model, settings=_tiny_settings(epochs=2))
    manifest = read_manifest(out)
    assert manifest == result.manifest
    assert manifest["dataset"]["sha256"] == json.loads((small_data / "manifest.json").read_text())["sha256"]
    assert manifest["base_model"] == str(tiny_model)
    assert manifest["steps"] == manifest["total_steps"] == 12  # 2 epochs of 24 examples in batches of 4
    assert manifest["settings"]["learning_rate"] == 1e-3 and manifest["cpu_seconds"] > 0
    assert manifest["labels"]["intents"] == {"A": "cancel_order", "B": "get_refund", "C": "track_order"}
    assert [p["step"] for p in manifest["learning_curve"]] == [0, 12]
    assert manifest["learning_curve"][-1]["loss"] is not None
    assert not (out / "checkpoints").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "manifest.json"):
        assert (out / name).is_file()
    assert "im_start" in (out / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in out.glob("*.jinja")
    )

    strategy = load_router_strategy(out)
    proposal = strategy.propose("where is my order 123?")
    assert proposal.label in INTENTS and proposal.model == "model"

    with pytest.raises(DistillError, match="--overwrite"):
        train_router_slm(small_data, output_dir=out, base=tiny_model, settings=_tiny_settings())


@pytest.fixture(scope="module")
def learnt_router(tiny_model, small_data, tmp_path_factory) -> Path:
    """A tiny router trained with the learnt label set (scored, never listed)."""
    out = tmp_path_factory.mktemp("learnt") / "model"
    train_router_slm(
        small_data, output_dir=out, base=tiny_model, settings=_tiny_settings(label_style="learnt", eval_examples=0)
    )
    return out


@pytest.mark.slow  # trains a model
def test_a_learnt_label_set_routes_without_a_label_list(learnt_router):
    manifest = read_manifest(learnt_router)
    assert manifest["router"]["list_labels"] is False
    assert manifest["labels"]["intents"] == {intent: intent for intent in INTENTS}
    strategy = load_router_strategy(learnt_router)
    assert strategy.list_labels is False
    assert strategy.propose("where is my order 123?").label in INTENTS


@pytest.mark.slow  # trains a model
def test_backend_agreement_reports_same_answers_accuracy_and_the_risk_coverage_curve(
    learnt_router, small_data, tmp_path
):
    from agentgraph.distill.agreement import backend_agreement
    from agentgraph.slm import TransformersSLM

    report = backend_agreement(learnt_router, TransformersSLM(learnt_router), TransformersSLM(learnt_router),
                               data_dir=small_data, limit=6, names=("first", "second"))  # fmt: skip
    assert report.rows == 6 and report.same_answer == 1.0 and report.probability_gap_max == 0.0
    assert report.accuracy["first"] == report.accuracy["second"]
    assert set(report.selective_accuracy_at_coverage["first"]) == {"0.80", "0.90", "0.95"}
    with pytest.raises(DistillError, match="no distilled-model manifest"):
        backend_agreement(tmp_path, TransformersSLM(learnt_router), TransformersSLM(learnt_router))


@pytest.mark.slow
@pytest.mark.vllm
def test_a_distilled_router_served_by_vllm_answers_as_the_embedded_backend(
    learnt_router, small_data, vllm_python, tmp_path
):
    """The artifact is a plain model folder: vLLM serves it and routes the held-out requests as TransformersSLM does."""
    from agentgraph.distill.agreement import backend_agreement
    from agentgraph.slm import VLLMSLM, TransformersSLM
    from agentgraph.slm.server import ServeSettings, VLLMServer

    # The tiny model's context is 2,048 positions, below the server's default 4,096.
    settings = ServeSettings(model=str(learnt_router), port=0, python=vllm_python, max_model_len=2048)
    with VLLMServer(settings, log_path=tmp_path / "server.log") as server:
        served = VLLMSLM(server.base_url)
        report = backend_agreement(
            learnt_router, TransformersSLM(learnt_router), served, data_dir=small_data, limit=None
        )
    assert report.rows == 12 and report.role == "route"
    assert report.same_answer == 1.0, report.disagreements
    assert report.probability_gap_max < 2e-5, report.probability_gap_max


@pytest.fixture(scope="module")
def lora_router(tiny_model, small_data, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model, trained for the route role through the CLI."""
    out = tmp_path_factory.mktemp("lora") / "router-adapter"
    args = ["distill", "train", "--role", "route", "--data", str(small_data), "--out", str(out), "--base", str(tiny_model),
            "--epochs", "2", "--batch-size", "4", "--lr", "1e-2", "--threads", "2", "--lora-rank", "8"]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.mark.slow  # trains a model
def test_a_lora_run_writes_an_adapter_on_its_base_that_the_embedded_backend_merges(lora_router, tiny_model, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from agentgraph.slm import TransformersSLM
    from agentgraph.slm.models import adapter_settings, model_and_adapter

    assert not (lora_router / "model.safetensors").exists()
    manifest = read_manifest(lora_router)
    assert manifest["artifact"] == "lora_adapter" and manifest["settings"]["lora"]["rank"] == 8
    config = adapter_settings(lora_router)
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == str(tiny_model)
    adapter = load_file(lora_router / "adapter_model.safetensors")
    # Two layers x seven projections x (A, B), and the count the manifest reports.
    assert len(adapter) == 28 and sum(t.numel() for t in adapter.values()) == manifest["trained_parameters"]
    assert (
        manifest["trained_parameters"]
        < sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters()) / 10
    )
    assert model_and_adapter(lora_router) == (tiny_model, lora_router)

    slm = TransformersSLM(lora_router)
    assert slm.model_name == lora_router.name and slm.folder == tiny_model
    prompt = torch.tensor(
        [slm.tokenize_chat([{"role": "user", "content": "cancel my order"}], add_generation_prompt=True)]
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.inference_mode():
        base_logits = base(input_ids=prompt).logits
        unmerged = PeftModel.from_pretrained(base, lora_router).eval()(input_ids=prompt).logits
        merged = slm.model(input_ids=prompt).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)  # merging changes nothing but the cost
    assert not torch.allclose(merged, base_logits, atol=1e-2)  # and the adapter did learn something
    assert load_router_strategy(lora_router).propose("where is my order 123?").label in INTENTS


@pytest.mark.slow  # trains a model
def test_distill_merge_writes_a_whole_model_that_answers_as_the_adapter(lora_router, tiny_model, tmp_path, capsys):
    from agentgraph.slm import TransformersSLM
    from agentgraph.slm.models import is_adapter_folder, model_and_adapter

    merged = tmp_path / "merged"
    assert main(["distill", "merge", "--model", str(lora_router), "--out", str(merged)]) == 0
    assert f"wrote       {merged}" in capsys.readouterr().out
    assert not is_adapter_folder(merged) and model_and_adapter(merged) == (merged, None)
    manifest = read_manifest(merged)
    assert manifest["artifact"] == "model" and manifest["merged_from"] == str(lora_router)
    assert {k: v for k, v in manifest.items() if k != "merged_from"} == read_manifest(lora_router) | {
        "artifact": "model"
    }

    requests = ["cancel my order", "where is my refund?", "I want to talk to a person"]
    adapter, whole = load_router_strategy(lora_router), load_router_strategy(merged)
    for request in requests:
        expected, got = adapter.propose(request), whole.propose(request)
        assert got.label == expected.label and got.confidence == pytest.approx(expected.confidence, abs=1e-5)
    assert TransformersSLM(merged).model_name == "merged"

    # A second merge into the same folder must be asked for; a whole model is not an adapter.
    assert main(["distill", "merge", "--model", str(lora_router), "--out", str(merged)]) == 2
    assert "already holds a trained model; pass --overwrite" in capsys.readouterr().err
    assert main(["distill", "merge", "--model", str(lora_router), "--out", str(merged), "--overwrite"]) == 0
    assert main(["distill", "merge", "--model", str(tiny_model), "--out", str(tmp_path / "again")]) == 2
    assert "is not a LoRA adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


@pytest.mark.slow  # trains a model
def test_an_adapter_whose_base_is_gone_is_a_clear_error(lora_router, tmp_path):
    import shutil

    from agentgraph.errors import ModelNotFoundError
    from agentgraph.slm import TransformersSLM

    moved = tmp_path / "adapter"
    shutil.copytree(lora_router, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelNotFoundError, match="was trained on .*gone"):
        TransformersSLM(moved)
    with pytest.raises(ModelNotFoundError, match="is a LoRA adapter"):
        prepare_model_folder(lora_router)


@pytest.mark.slow
@pytest.mark.vllm
def test_a_lora_router_served_by_vllm_beside_its_base_answers_as_the_embedded_backend(
    lora_router, tiny_model, small_data, vllm_python, tmp_path
):
    """`--model ADAPTER` serves the base with --enable-lora --lora-modules; the adapter answers as TransformersSLM does."""
    from agentgraph.distill.agreement import backend_agreement
    from agentgraph.slm import VLLMSLM, TransformersSLM
    from agentgraph.slm.server import ServeSettings, VLLMServer

    settings = ServeSettings(model=str(lora_router), port=0, python=vllm_python, max_model_len=2048)
    with VLLMServer(settings, log_path=tmp_path / "server.log") as server:
        served = VLLMSLM(server.base_url, lora_router.name)
        report = backend_agreement(lora_router, TransformersSLM(lora_router), served, data_dir=small_data, limit=None)
        base = VLLMSLM(server.base_url, tiny_model.name).choose("cancel my order", list(INTENTS))
    assert report.rows == 12 and report.same_answer == 1.0, report.disagreements
    assert report.probability_gap_max < 2e-5, report.probability_gap_max
    # The base is served too, unchanged by the adapter.
    assert base.label in INTENTS


@pytest.mark.slow  # trains a model, twice
@pytest.mark.parametrize(
    ("lora", "weights_file"),
    [pytest.param(None, "model.safetensors", id="full"),
     pytest.param(LoraSettings(rank=4), "adapter_model.safetensors", id="lora")],
)  # fmt: skip
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(
    tiny_model, small_data, tmp_path, lora, weights_file
):
    from safetensors.torch import load_file

    settings = _tiny_settings(epochs=3, checkpoint_every=2, eval_examples=0, lora=lora)
    train_router_slm(small_data, output_dir=tmp_path / "straight", base=tiny_model, settings=settings)

    def kill_at_step_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_router_slm(small_data, output_dir=interrupted, base=tiny_model, settings=settings, on_step=kill_at_step_5)
    state = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4 and not (interrupted / "manifest.json").exists()
    if lora is not None:  # a LoRA checkpoint keeps the adapter, not the base it leaves untouched
        assert state["model"] and all("lora_" in name for name in state["model"])
    with pytest.raises(DistillError, match="--resume"):
        train_router_slm(small_data, output_dir=interrupted, base=tiny_model, settings=settings)
    with pytest.raises(DistillError, match="other data, settings"):
        train_router_slm(small_data, output_dir=interrupted, base=tiny_model, settings=settings.model_copy(update={"seed": 1}),
                         resume=True)  # fmt: skip
    resumed = train_router_slm(small_data, output_dir=interrupted, base=tiny_model, settings=settings, resume=True)
    assert resumed.manifest["steps"] == 18

    straight, again = load_file(tmp_path / "straight" / weights_file), load_file(interrupted / weights_file)
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
    # The same seed without interruption gives the same weights too (and a different seed does not).
    other = train_router_slm(small_data, output_dir=tmp_path / "seed1", base=tiny_model,
                             settings=settings.model_copy(update={"seed": 1}))  # fmt: skip
    different = load_file(Path(other.output_dir) / weights_file)
    assert any(not torch.equal(straight[name], different[name]) for name in straight)


@pytest.mark.slow  # trains a model
def test_the_gate_refuses_promotion_below_its_default_threshold_of_92_percent_and_records_it(
    tiny_model, small_data, tmp_path
):
    out = tmp_path / "model"
    train_router_slm(small_data, output_dir=out, base=tiny_model, settings=_tiny_settings())
    report = gate_router(
        out, base=tiny_model, dev_limit=6, descriptions=CUSTOMER_SUPPORT_INTENTS
    )  # the threshold left at its default
    assert report.test_rows == 12 and report.dev_rows == 6 and report.dataset_matches
    assert report.agreement == report.student.evaluation.accuracy < 0.92  # a random two-layer model cannot
    assert report.base is not None and report.base.evaluation.in_scope == 12
    assert (report.threshold, report.decision) == (0.92, "refused")
    assert report.reason == f"agreement {report.agreement:.4f} < threshold 0.9200"
    with pytest.raises(PromotionRefusedError, match="not promoted: agreement .* < threshold 0.9200"):
        promote(out, report)
    promotion = read_manifest(out)["promotion"]
    assert (promotion["decision"], promotion["threshold"]) == ("refused", 0.92), (
        "the default is what the manifest records"
    )

    accepted = gate_router(out, threshold=0.0, base=False, dev_limit=6, limit=3)
    assert accepted.base is None and accepted.test_rows == 3 and accepted.passed
    assert promote(out, accepted)["decision"] == "accepted"
    manifest = read_manifest(out)
    assert [r["decision"] for r in manifest["gate_history"]] == ["refused", "accepted"]

    # Gating on other data than the artifact was trained on refuses whatever the agreement.
    other = _dataset(tmp_path / "other", INTENTS, train=3, dev=2, test=2)
    foreign = gate_router(out, other, threshold=0.0, base=False)
    assert not foreign.dataset_matches and foreign.decision == "refused"


@pytest.mark.slow  # trains a model
def test_cli_trains_gates_and_refuses_to_promote(tiny_model, small_data, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["distill", "train", "--role", "route", "--data", str(small_data), "--out", str(out), "--base", str(tiny_model),
            "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--threads", "2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained     6/6 steps" in printed and "dev accuracy" in printed
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err

    gate = [
        "distill",
        "gate",
        "--model",
        str(out),
        "--dev-limit",
        "6",
        "--no-base",
        "--promote",
    ]  # no --threshold: 0.92
    assert main(gate) == 2
    captured = capsys.readouterr()
    assert "decision    refused: agreement " in captured.out and "< threshold 0.9200" in captured.out
    assert "not promoted" in captured.err and read_manifest(out)["promotion"]["threshold"] == 0.92
    assert main([*gate[:-1], "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["threshold"], printed["decision"]) == (0.92, "refused") and printed["agreement"] < 0.92
    assert main(["distill", "train", "--role", "route", "--data", str(tmp_path), "--out", str(tmp_path / "m2")]) == 2
    assert "agentgraph distill dataset --role route" in capsys.readouterr().err


@pytest.mark.slow  # trains a model
def test_the_example_graph_serves_a_promoted_distilled_router_with_the_calibration_its_gate_fitted(
    tiny_model, small_data, tmp_path, embedded_slm, capsys
):
    import shutil

    from agentgraph.distill.registry import ModelRegistry
    from agentgraph.errors import ConfigError
    from agentgraph.graphs.customer_support import CustomerSupportParts
    from agentgraph.routing import ClassifierStrategy

    out, data = tmp_path / "router-v1", tmp_path / "data"
    train_router_slm(small_data, output_dir=out, base=tiny_model, settings=_tiny_settings())
    ungated = shutil.copytree(out, tmp_path / "router-ungated")
    registry = ModelRegistry(data / "models")
    registry.promote("router", ungated, force=True, reason="a person forced it")
    with pytest.raises(ConfigError, match="was never gated, so its confidence has no calibration"):
        CustomerSupportParts(data_dir=data, slm=embedded_slm)

    gate = ["distill", "gate", "--model", str(out), "--dev-limit", "6", "--limit", "3", "--no-base", "--threshold", "0",
            "--promote", "--registry", str(data / "models")]  # fmt: skip
    assert main(gate) == 0
    assert f"promoted    {out} (serves router from now on" in capsys.readouterr().out
    fitted = read_manifest(out)["promotion"]["calibration"]
    parts = CustomerSupportParts(data_dir=data, slm=embedded_slm)
    served = parts.routing
    assert served.slm.model_name == "router-v1" and served.threshold == fitted["threshold"]
    assert served.calibrator.model_dump(mode="json") == fitted["calibrator"]

    text = "where is my order 4587345?"
    attempt = parts.nodes()["router"]({"text": text}, {})["decisions"][0].metadata["attempts"][0]
    direct = load_router_strategy(out, gated=True).propose(text)
    assert (attempt["strategy"], attempt["model"], attempt["label"]) == ("slm", "router-v1", direct.label)
    assert attempt["confidence"] == pytest.approx(direct.confidence) and attempt["threshold"] == fitted["threshold"]

    assert registry.rollback("router").path == str(ungated.resolve())
    assert registry.rollback("router") is None  # back to the default: the example's classifier
    assert isinstance(CustomerSupportParts(data_dir=data, slm=embedded_slm).routing, ClassifierStrategy)


def test_a_dataset_of_another_role_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"role": "extract", "sha256": "x"}))
    with pytest.raises(DistillError, match="--role route"):
        load_route_dataset(tmp_path)


@pytest.mark.slow  # trains a model
def test_extraction_trains_on_the_prompt_its_schema_enforcer_sends_and_is_gated(tiny_model, tmp_path):
    from agentgraph.distill.agreement import backend_agreement
    from agentgraph.nodes.schema_enforcer import create_schema_enforcer
    from agentgraph.slm import TransformersSLM

    data = _dataset(tmp_path / "data", INTENTS, train=6, dev=2, test=2, role="extract")
    out = tmp_path / "model"
    args = ["distill", "train", "--role", "extract", "--data", str(data), "--out", str(out), "--base", str(tiny_model),
            "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--threads", "2"]  # fmt: skip
    assert main(args) == 0
    manifest = read_manifest(out)
    assert (
        manifest["role"] == "extract"
        and manifest["schema"] == "agentgraph.graphs.customer_support.distillation:SupportExtraction"
    )
    assert manifest["schema_enforcer"] == {
        "prompt": "schema_enforcer.v1",
        "prompt_version": 1,
        "describe_schema": False,
    }
    assert (
        manifest["steps"] == 5 and manifest["learning_curve"][-1]["dev_accuracy"] is not None
    )  # teacher-forced exact match

    slm = TransformersSLM(out)
    seen = []
    original = slm._generate_json

    def spy(messages, prompt_ids, json_schema, max_tokens):
        seen.append(prompt_ids)
        return original(messages, prompt_ids, json_schema, max_tokens)

    slm._generate_json = spy
    request = "Where is order 12345?"
    create_schema_enforcer(**load_extraction_artifact(out, slm), mode="student", max_tokens=16)({"text": request}, {})
    learnt = ExtractPromptEncoder(slm.tokenizer, SupportExtraction, describe_schema=False, prompt_version=1)
    assert seen[0] == learnt.prompt_ids(request), "the artifact is asked exactly as it was trained"
    prompt = slm.tokenizer.decode(seen[0])
    assert f"<<<\n{request}\n>>>" in prompt and "refund_amount" not in prompt, "the request fenced, the schema learnt"
    described = ExtractPromptEncoder(slm.tokenizer, SupportExtraction, describe_schema=True, prompt_version=1)
    first_call = len(seen)  # a random model's answer may be repaired: the node's first prompt is the one compared
    create_schema_enforcer(slm, SupportExtraction, mode="student", prompt_version=1, max_tokens=16)(
        {"text": request}, {}
    )
    assert seen[first_call] == described.prompt_ids(request) and "refund_amount" in slm.tokenizer.decode(
        seen[first_call]
    )
    target = learnt.target_ids({"intent": "track_order", "order_id": "12345", "person_name": None})
    assert slm.tokenizer.decode(target) == '{"intent":"track_order","order_id":"12345"}<|im_end|>\n', (
        "defaults left out"
    )

    agreement = backend_agreement(out, slm, TransformersSLM(out), limit=3, names=("spied", "fresh"))
    assert (agreement.role, agreement.rows, agreement.same_answer) == ("extract", 3, 1.0)
    assert set(agreement.accuracy) == {"spied", "fresh"} and agreement.accuracy["spied"] == agreement.accuracy["fresh"]

    report = gate_extractor(out, base=False)  # the threshold left at its default
    assert report.test_rows == 6 and 0 <= report.student.schema_valid <= 1
    assert report.agreement == report.student.entity_exact_match < 0.92
    assert (report.threshold, report.decision) == (0.92, "refused")
    assert report.reason == f"agreement {report.agreement:.4f} < threshold 0.9200"
    with pytest.raises(PromotionRefusedError):
        promote(out, report)
    assert read_manifest(out)["promotion"]["decision"] == "refused"


@pytest.mark.slow  # curates the whole Bitext file and trains a (tiny) model
def test_bootstrap_curates_trains_gates_and_promotes_what_the_example_graph_then_serves(
    tiny_model, tmp_path, capsys, embedded_slm
):
    from agentgraph.distill.registry import ModelRegistry
    from agentgraph.graphs.customer_support import CustomerSupportParts

    registry = tmp_path / "data" / "models"
    command = ["distill", "bootstrap", "customer-support", "--registry", str(registry), "--base", str(tiny_model),
               "--epochs", "0.01", "--gate-rows", "4", "--json"]  # fmt: skip
    # A random model misses the default threshold: refused (exit 2), and nothing is registered.
    assert main(command) == 2
    refused = json.loads(capsys.readouterr().out)
    assert refused["promoted"] is False and refused["gate"]["decision"] == "refused"
    assert read_manifest(refused["model"])["promotion"]["decision"] == "refused"
    assert ModelRegistry(registry).current("extract") is None
    assert refused["gate"]["test_rows"] == 4 and set(refused["minutes"]) == {"dataset", "train", "gate", "router"}

    # Accepted (a threshold it meets): registered, and the example graph built next serves it.
    assert main([*command, "--threshold", "0"]) == 0
    accepted = json.loads(capsys.readouterr().out)
    assert accepted["model"] != refused["model"], "each run writes its own folders"
    assert ModelRegistry(registry).current("extract").path == accepted["model"]
    manifest = read_manifest(accepted["model"])
    assert manifest["schema"] == "agentgraph.graphs.customer_support.ticket:SupportTicket"
    assert manifest["dataset"]["folder"] == accepted["dataset"]
    parts = CustomerSupportParts(data_dir=tmp_path / "data", slm=embedded_slm)
    assert str(parts.extraction_artifact["slm"].folder) == accepted["model"]


@pytest.mark.slow
def test_fine_tuning_smollm2_beats_the_base_model_on_held_out_requests(tmp_path):
    """Real SmolLM2-135M, 5 intents x 24 train requests, one epoch (15 steps): held-out accuracy far above the base model's."""
    intents = ("cancel_order", "check_invoice", "delivery_period", "get_refund", "recover_password")
    data = _dataset(tmp_path / "data", intents, train=24, dev=4, test=8)
    # Intent names (not codes) for so few steps: the names carry the base model's prior. float32: with bf16
    # autocast these 15 steps reached 87.5% against 92.5% (the full-data default recipe uses bf16).
    settings = DistillSettings(epochs=1, batch_size=8, learning_rate=2e-4, label_style="names", eval_examples=0,
                               progress=False, num_threads=2, bf16=False)  # fmt: skip
    manifest = train_router_slm(data, output_dir=tmp_path / "model", settings=settings).manifest
    assert manifest["steps"] == 15
    report = gate_router(
        tmp_path / "model", target_accuracy=0.95, max_rejection=0.5, descriptions=CUSTOMER_SUPPORT_INTENTS
    )
    assert report.base is not None and report.test_rows == 40
    base, student = report.base.evaluation.accuracy, report.student.evaluation.accuracy
    print(f"student {student:.3f} base {base:.3f}; {manifest['training_seconds']:.0f} s training")
    assert student >= 0.9 and student >= base + 0.15, (student, base)
