import json

import pytest
import torch
from transformers import AutoModel

from conftest import CONFIGS, MODEL_TYPES, batch, tiny_model
from prunelab.cli import main
from prunelab.methods.layer_drop import choose_by_contribution, contribution_scores, drop_layers, layers_to_drop, num_layers


@pytest.mark.parametrize("strategy, expected", [
    ("top", [8, 9, 10, 11]),
    ("bottom", [0, 1, 2, 3]),
    ("alternate-even", [5, 7, 9, 11]),  # 1-based 6, 8, 10, 12: the paper's example
    ("alternate-odd", [4, 6, 8, 10]),   # 1-based 5, 7, 9, 11
    ("symmetric", [4, 5, 6, 7]),
])
def test_positional_strategies_on_twelve_layers(strategy, expected):
    assert layers_to_drop(12, strategy, 4) == expected


@pytest.mark.parametrize("args, message", [
    ((12, "top", 12), "--count 12 must be between 1 and 11"),
    ((12, "top", 0), "--count 0 must be between 1 and 11"),
    ((12, "alternate-odd", 7), "alternate-odd can drop at most 6 of 12 layers"),
    ((12, "middle", 2), "unknown positional strategy 'middle'"),
])
def test_bad_positional_requests(args, message):
    with pytest.raises(ValueError, match=message):
        layers_to_drop(*args)


def twelve_layers(model_type):
    import transformers

    config = CONFIGS[model_type]()
    for attribute in ("num_hidden_layers", "n_layers", "n_layer"):
        if hasattr(config, attribute):
            setattr(config, attribute, 12)
    torch.manual_seed(0)
    if model_type == "xlnet":
        return transformers.XLNetModel(config).eval()
    return transformers.AutoModel.from_config(config).eval()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_dropped_model_saves_and_loads_with_plain_transformers(model_type, tmp_path):
    model = twelve_layers(model_type)
    params = sum(p.numel() for p in model.parameters())
    drop_layers(model, [1, 5, 11])
    assert num_layers(model) == 9 and sum(p.numel() for p in model.parameters()) < params
    inputs = batch(model_type)
    with torch.no_grad():
        expected = model(**inputs)[0]
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert num_layers(loaded) == 9
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs)[0], expected, atol=1e-5)


def test_the_right_layers_are_removed():
    model = twelve_layers("bert")
    originals = list(model.encoder.layer)
    drop_layers(model, [0, 11])
    assert list(model.encoder.layer) == originals[1:11] and model.config.num_hidden_layers == 10
    with pytest.raises(ValueError, match="cannot drop layers"):
        drop_layers(model, list(range(10)))


def test_contribution_picks_the_layer_that_changes_cls_least():
    model = tiny_model("bert", "base")
    with torch.no_grad():  # make layer 1 (nearly) the identity on its input
        for dense in (model.encoder.layer[1].attention.output.dense, model.encoder.layer[1].output.dense):
            dense.weight.zero_()
            dense.bias.zero_()

    class Tok:  # a minimal tokenizer over the tiny vocabulary
        padding_side = "right"

        def __call__(self, texts, **kwargs):
            ids = torch.tensor([[2] + [5 + (ord(w[0]) % 50) for w in t.split()][:10] + [3] for t in texts])
            return transformers_batch(ids)

    scores = contribution_scores(model, Tok(), ["a b c d e f g h i j"] * 4)
    assert len(scores) == 2 and scores[1] > scores[0]
    assert choose_by_contribution(scores, count=1) == [1]
    assert choose_by_contribution([0.5, 0.99, 0.97], min_similarity=0.9) == [1, 2]
    with pytest.raises(ValueError, match="would drop every layer"):
        choose_by_contribution([0.95, 0.99], min_similarity=0.9)


def transformers_batch(ids):
    from transformers import BatchEncoding

    return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def test_cli_end_to_end_and_errors(bert_dir, tmp_path, capsys):
    out = tmp_path / "dropped"
    assert main(["drop-layers", str(bert_dir), "--strategy", "top", "--count", "1", "--out", str(out)]) == 0
    info = json.loads((out / "prunelab.json").read_text())
    assert info["dropped"] == [1] and info["layers_after"] == 1 and info["params_after"] < info["params_before"]
    assert info["seconds_before"] > 0 and info["seconds_after"] > 0 and not (out / "masks.safetensors").exists()
    assert AutoModel.from_pretrained(out).config.num_hidden_layers == 1
    assert main(["drop-layers", str(bert_dir), "--strategy", "contribution", "--count", "1", "--out", str(tmp_path / "c")]) == 0
    assert len(json.loads((tmp_path / "c" / "prunelab.json").read_text())["contribution_scores"]) == 2
    capsys.readouterr()
    for args, message in [
        (["--strategy", "top", "--count", "2"], "--count 2 must be between 1 and 1"),
        (["--layers", "0,1"], "cannot drop layers [0, 1] of a 2-layer model"),
        (["--layers", "x"], "--layers 'x' is not a comma-separated list"),
        ([], "give either --strategy"),
        (["--strategy", "top"], "--strategy top needs --count K"),
    ]:
        assert main(["drop-layers", str(bert_dir), *args, "--out", str(tmp_path / "bad")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
