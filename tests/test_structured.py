"""Structured pruning: heads and FFN neurons physically removed, the function kept, the shapes saved and loaded back."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

import prunelab
from conftest import MODEL_TYPES, batch, tiny_model
from glue_fixtures import glue_dir, save_tiny  # noqa: F401
from prunelab.artifact import save_artifact
from prunelab.cli import main
from prunelab.methods import structured as S


def gated(model, keep):
    """A copy of `model` with the gates of the units not in `keep` at zero: their output-projection slices zeroed."""
    model = copy.deepcopy(model)
    units, hd, counts = S.units_of(model), S.head_dim(model), S.unit_counts(model)
    with torch.no_grad():
        for i, layer in enumerate(S.encoder_layers(model)):
            for kind, (path, axis, grouped) in (("heads", units.heads_out), ("ffn", units.ffn_out)):
                weight = layer.get_parameter(path)
                view = weight.unflatten(axis, (-1, hd)) if grouped else weight
                index = [slice(None)] * view.dim()
                index[axis] = [j for j in range(counts[kind][i]) if j not in keep[kind][i]]
                view[tuple(index)] = 0
    return model


def outputs(model, model_type, key="last_hidden_state"):
    with torch.no_grad():
        return getattr(model(**batch(model_type)), key)


@pytest.mark.parametrize("scope", S.UNIT_SCOPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_removal_computes_what_the_gated_model_computes(model_type, scope):
    model = tiny_model(model_type)
    params = sum(p.numel() for p in model.parameters())
    reference = copy.deepcopy(model)
    keep = S.prune_units(model, heads=0.5, ffn=0.4, scope=scope)
    assert torch.allclose(outputs(model, model_type), outputs(gated(reference, keep), model_type), atol=1e-5)
    counts = S.unit_counts(model)
    assert counts["heads"] == [len(k) for k in keep["heads"]] and counts["ffn"] == [len(k) for k in keep["ffn"]]
    assert sum(counts["heads"]) == 8 - 4 and sum(counts["ffn"]) == 2 * 37 - (round(0.4 * 74) if scope == "global" else 2 * 15)
    assert sum(p.numel() for p in model.parameters()) < params
    model.train()  # and it trains: gradients reach the smaller matrices
    model(**batch(model_type)).last_hidden_state.sum().backward()
    units = S.units_of(model)
    assert all(S.encoder_layers(model)[0].get_parameter(path).grad is not None for path, _, _ in (units.heads_out, units.ffn_out))


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_a_layer_may_lose_every_head_only_when_allowed(model_type):
    model = tiny_model(model_type)
    with pytest.raises(ValueError, match="--allow-empty-attention"):
        S.prune_units(copy.deepcopy(model), heads=1.0)
    reference = copy.deepcopy(model)
    keep = S.prune_units(model, heads=1.0, ffn=1.0, allow_empty_attention=True)
    assert S.unit_counts(model) == {"heads": [0, 0], "ffn": [0, 0]}
    assert isinstance(S.encoder_layers(model)[0].get_submodule(S.units_of(model).empty[0]), S.EmptyAttention)
    assert torch.allclose(outputs(model, model_type), outputs(gated(reference, keep), model_type), atol=1e-5)


def test_xlnet_cannot_skip_attention():
    with pytest.raises(ValueError, match="xlnet cannot skip attention"):
        S.prune_units(tiny_model("xlnet"), heads=1.0, allow_empty_attention=True)


def test_global_scope_removes_exact_counts_and_keeps_a_head_per_layer():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    assert S.choose(scores, 0.5, "global", min_keep=1) == [[3], [1, 2, 3]]  # layer 0 keeps its best; one more goes
    assert S.choose(scores, 0.5, "global") == [[], [0, 1, 2, 3]]
    assert S.choose(scores, 0.5, "layer") == [[2, 3], [2, 3]]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            S.choose(scores, bad, "layer")


def test_random_scores_follow_the_seed():
    model = tiny_model("bert")
    assert all(torch.equal(a, b) for a, b in zip(S.random_scores(model, 3)["ffn"], S.random_scores(model, 3)["ffn"]))
    assert not torch.equal(S.random_scores(model, 3)["ffn"][0], S.random_scores(model, 4)["ffn"][0])


def test_importance_is_the_gradient_of_a_gate_on_each_head():
    """Michel et al.'s |dL/dgate|, checked against real gates multiplied into the context before the output."""
    model = tiny_model("bert", "cls")
    inputs = {**batch("bert"), "labels": torch.tensor([0, 1, 0, 1])}
    scores = S.importance_scores(model, [inputs])
    assert all(p.grad is None for p in model.parameters())  # the scoring leaves no gradients behind
    gates = [torch.ones(4, requires_grad=True) for _ in S.encoder_layers(model)]
    hooks = [layer.attention.output.dense.register_forward_pre_hook(
        lambda m, args, g=g: (args[0] * g.repeat_interleave(8),)) for layer, g in zip(S.encoder_layers(model), gates)]
    model.eval()
    model(**inputs).loss.backward()
    for h in hooks:
        h.remove()
    for score, gate in zip(scores["heads"], gates):
        expected = gate.grad.abs() / gate.grad.abs().norm()
        assert torch.allclose(score, expected, atol=1e-5)


def test_from_masks_removes_the_units_the_masks_pruned():
    model = tiny_model("bert")
    masks = {t.name: torch.ones(t.shape, dtype=torch.bool) for t in prunelab.resolve_targets(model)}
    masks["encoder.layer.0.attention.self.query.weight"][8:16] = False  # head 1 of layer 0: Q rows
    masks["encoder.layer.0.attention.self.key.weight"][8:16] = False
    masks["encoder.layer.0.attention.self.value.weight"][8:16] = False
    masks["encoder.layer.0.attention.output.dense.weight"][:, 8:16] = False
    masks["encoder.layer.1.output.dense.weight"][:, 5] = False  # FFN neuron 5 of layer 1: half its weights
    keep = S.prune_units(model, criterion="from-masks", masks=masks, min_sparsity=0.5)
    assert keep["heads"] == [[0, 2, 3], [0, 1, 2, 3]]
    assert keep["ffn"][0] == list(range(37)) and 5 not in keep["ffn"][1] and len(keep["ffn"][1]) == 36


@pytest.mark.parametrize("head", ["base", "mlm", "cls"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_saved_structure_loads_back_and_plain_transformers_refuses_it(tmp_path, model_type, head):
    model = tiny_model(model_type, head)
    S.prune_units(model, heads=0.5, ffn=0.3, scope="global")
    save_artifact(model, None, None, {}, tmp_path / "m")
    loaded = prunelab.from_pretrained(tmp_path / "m").model
    assert type(loaded) is type(model) and S.unit_counts(loaded) == S.unit_counts(model)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    key = "last_hidden_state" if head == "base" else "logits"
    assert torch.equal(outputs(loaded, model_type, key), outputs(model, model_type, key))
    with pytest.raises(Exception, match=r"load this model with prunelab\.from_pretrained"):
        transformers.AutoModel.from_pretrained(tmp_path / "m")


def test_a_uniform_ffn_width_loads_with_plain_transformers(tmp_path):
    model = tiny_model("bert", "mlm")
    S.prune_units(model, ffn=0.5)  # the same width in every layer, every head kept: config.json can say it
    save_artifact(model, None, None, {}, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["intermediate_size"] == 37 - round(0.5 * 37) and S.UNIT_COUNTS_KEY not in config
    plain = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "m")
    assert torch.equal(outputs(plain, "bert", "logits"), outputs(model, "bert", "logits"))


def test_cli_prunes_compresses_inspects_and_finetunes_a_structured_model(tmp_path, capsys, glue_dir):  # noqa: F811
    source = save_tiny(tmp_path / "src")
    assert main(["prune-structured", str(source), "--heads", "0.5", "--ffn", "0.5", "--out", str(tmp_path / "s")]) == 0
    info = json.loads((tmp_path / "s" / "prunelab.json").read_text())
    assert info["heads_after"] == [2, 2] and info["encoder_params_after"] < 0.6 * info["encoder_params_before"]
    assert main(["compress", str(tmp_path / "s"), "--out", str(tmp_path / "c")]) == 0
    again = prunelab.from_pretrained(tmp_path / "c").model
    assert S.unit_counts(again) == {"heads": [2, 2], "ffn": [19, 19]}
    assert main(["inspect", str(tmp_path / "c")]) == 0
    assert main(["finetune", str(tmp_path / "s"), "--task", "rte", "--data-dir", str(glue_dir), "--lr", "1e-3",
                 "--epochs", "1", "--batch-size", "4", "--max-seq-len", "16", "--save-model",
                 "--out", str(tmp_path / "ft")]) == 0
    tuned = prunelab.from_pretrained(tmp_path / "ft" / "model").model
    assert type(tuned).__name__ == "BertForSequenceClassification" and S.unit_counts(tuned)["heads"] == [2, 2]
    assert main(["prune-structured", str(source), "--heads", "0.5", "--criterion", "importance", "--task", "rte",
                 "--data-dir", str(glue_dir), "--samples", "8", "--out", str(tmp_path / "imp")]) == 0


def test_per_head_analyses_split_each_layer_by_its_own_head_count():
    from prunelab.analysis.weights import head_pruning, key_heatmap

    model = tiny_model("bert")
    S.remove_units(model, {"heads": [[0, 3], [1, 2, 3]]})
    result = head_pruning(model, [0.5])
    assert result["heads"] == [2, 3]
    per_matrix = {}
    for row in result["rows"]:
        per_matrix.setdefault((row["name"]), []).append(row["head"])
    assert per_matrix["encoder.layer.0.attention.self.query.weight"] == [0, 1]
    assert per_matrix["encoder.layer.1.attention.output.dense.weight"] == [0, 1, 2]
    assert key_heatmap(model, 1)["magnitude"].shape == (32, 3 * 8)


@pytest.mark.parametrize("argv, says", [
    (["--heads", "1.5"], "--heads 1.5 must be a number >= 0 and <= 1"),
    (["--ffn", "-0.1"], "--ffn -0.1 must be a number >= 0 and <= 1"),
    (["--heads", "1.0"], "--allow-empty-attention"),
    (["--heads", "0.5", "--criterion", "importance"], "needs task data: give --task"),
    (["--criterion", "from-masks", "--threshold", "0.5"], "needs a pruned artifact with masks"),
    (["--criterion", "from-masks"], "needs --threshold"),
    (["--criterion", "from-masks", "--threshold", "0.5", "--heads", "0.5"], "--heads and --ffn do not apply"),
    (["--heads", "0.5", "--threshold", "0.5"], "--threshold applies to --criterion from-masks only"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, says):
    source = save_tiny(tmp_path / "src")
    capsys.readouterr()
    assert main(["prune-structured", str(source), *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_architecture_without_head_geometry_is_refused(tmp_path, capsys):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    transformers.GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    assert main(["prune-structured", str(tmp_path / "gpt2"), "--heads", "0.5", "--out", str(tmp_path / "out")]) == 2
    assert "unsupported model_type 'gpt2'" in capsys.readouterr().err and not (tmp_path / "out").exists()
