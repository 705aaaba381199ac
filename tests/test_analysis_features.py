import pytest
import torch
from conftest import MODEL_TYPES, batch, tiny_model

from prunelab.analysis import encode, layer_similarity, load_texts, mlm_loss, sensitivity, similarity_curves
from prunelab.analysis.features import mask_tokens
from prunelab.artifact import load_model

TEXTS = ["w1 w2 w3 w4 w5", "w6 w7", "w8 w9 w10 w11 w12 w13 w14", "w15", "w16 w17 w18"]


def padded_batches(model_type):
    b = batch(model_type, size=3, length=6)
    b["attention_mask"][1, 3:] = 0  # padding at the end of one row
    return [b, batch(model_type, size=2, length=4, seed=1)]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_model_is_identical_to_itself_in_every_layer(model_type):
    model = tiny_model(model_type)
    result = layer_similarity(model, model, padded_batches(model_type))
    assert len(result["mean"]) == model.config.num_hidden_layers + 1
    assert result["mean"] == pytest.approx([1.0] * len(result["mean"]), abs=1e-5)
    assert result["tokens"] == 3 * 6 - 3 + 2 * 4  # padding tokens are not counted


def test_padding_tokens_do_not_count():
    model, other = tiny_model("bert"), tiny_model("bert", seed=1)
    batches = padded_batches("bert")
    garbage = [dict(b) for b in batches]
    garbage[0]["input_ids"] = batches[0]["input_ids"].clone()
    garbage[0]["input_ids"][1, 3:] = 7  # change only padded positions
    assert layer_similarity(model, other, batches)["mean"] == pytest.approx(layer_similarity(model, other, garbage)["mean"])


def test_similarity_curves_prune_a_copy_and_leave_the_reference_alone():
    reference = tiny_model("bert")
    before = {n: p.clone() for n, p in reference.named_parameters()}
    other = tiny_model("bert", seed=3)
    result = similarity_curves(reference, padded_batches("bert"), sparsities=[0.0, 0.5, 0.9], models={"other": other})
    curves = {c["label"]: c for c in result["curves"]}
    assert set(curves) == {"other", "one-shot 0%", "one-shot 50%", "one-shot 90%"}
    assert curves["one-shot 0%"]["mean"] == pytest.approx([1.0] * 3, abs=1e-5)
    assert curves["one-shot 90%"]["mean"][-1] < curves["one-shot 50%"]["mean"][-1] < 0.9999
    assert curves["other"]["sparsity"] is None and curves["other"]["mean"][-1] < 0.99
    assert result["layers"] == [0, 1, 2]
    assert all(torch.equal(p, before[n]) for n, p in reference.named_parameters())
    with pytest.raises(ValueError, match="nothing to compare"):
        similarity_curves(reference, padded_batches("bert"))


def test_encode_uses_batches_and_truncation(bert_dir):
    _, tokenizer = load_model(str(bert_dir))
    batches = encode(tokenizer, TEXTS, batch_size=2, max_length=6)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert max(b["input_ids"].shape[1] for b in batches) == 6
    with pytest.raises(ValueError, match="no tokenizer"):
        encode(None, TEXTS)


def test_mask_tokens_is_deterministic_and_spares_special_tokens(bert_dir):
    _, tokenizer = load_model(str(bert_dir))
    batches = encode(tokenizer, TEXTS * 10, batch_size=8)
    masked = mask_tokens(batches, tokenizer, probability=0.5, seed=0)
    again = mask_tokens(batches, tokenizer, probability=0.5, seed=0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(masked, again))
    for original, m in zip(batches, masked):
        chosen = m["labels"] != -100
        assert bool((m["input_ids"][chosen] == tokenizer.mask_token_id).all())
        assert torch.equal(m["labels"][chosen], original["input_ids"][chosen])
        assert not bool((chosen & (original["special_tokens_mask"].bool() | ~original["attention_mask"].bool())).any())
    assert sum(int((m["labels"] != -100).sum()) for m in masked) > 50


def test_sensitivity_by_layer_with_mlm_loss_restores_the_model(bert_dir):
    model, tokenizer = load_model(str(bert_dir))
    before = {n: p.clone() for n, p in model.named_parameters()}
    result = sensitivity(model, tokenizer, TEXTS * 4, 0.8, by="layer", batch_size=8)
    assert result["metric"] == "mlm_loss" and result["by"] == "layer"
    groups = [r["group"] for r in result["rows"]]
    assert groups == ["embeddings", "layer 0", "layer 1", "all"]  # never the pooler alone
    assert all(r["delta"] == pytest.approx(r["value"] - result["baseline"]) for r in result["rows"])
    assert any(abs(r["delta"]) > 1e-4 for r in result["rows"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    zero = sensitivity(model, tokenizer, TEXTS * 4, 0.0, by="kind", batch_size=8)
    assert all(r["delta"] == pytest.approx(0.0, abs=1e-9) for r in zero["rows"])
    assert [r["group"] for r in zero["rows"]][:2] == ["query", "key"]
    assert result["baseline"] == pytest.approx(mlm_loss(model, mask_tokens(encode(tokenizer, TEXTS * 4, batch_size=8), tokenizer)))


def test_sensitivity_by_similarity(bert_dir):
    model, tokenizer = load_model(str(bert_dir))
    result = sensitivity(model, tokenizer, TEXTS, 0.9, by="kind", metric="similarity")
    rows = {r["group"]: r for r in result["rows"]}
    assert result["baseline"] == 1.0 and rows["all"]["value"] < 1.0 and rows["all"]["delta"] < 0
    assert rows["ffn_in"]["numel"] == 2 * 32 * 37
    base = tiny_model("bert")  # no MLM head
    with pytest.raises(ValueError, match="has no masked-LM head"):
        sensitivity(base, tokenizer, TEXTS, 0.5, metric="mlm_loss")
    with pytest.raises(ValueError, match="unknown grouping 'head'"):
        sensitivity(base, tokenizer, TEXTS, 0.5, by="head")
    assert sensitivity(base, tokenizer, TEXTS, 0.5)["metric"] == "similarity"


def test_load_texts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a file with one text per line"):
        load_texts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no text"):
        load_texts(tmp_path / "empty.txt")
    (tmp_path / "t.txt").write_text("a b\n\n c d \n")
    assert load_texts(tmp_path / "t.txt") == ["a b", "c d"]
    assert load_texts(max_texts=3) == load_texts()[:3]
