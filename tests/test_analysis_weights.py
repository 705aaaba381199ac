import pytest
import torch
from conftest import MODEL_TYPES, tiny_model

from prunelab.analysis import (embedding_heatmap, head_pruning, key_heatmap, load_texts, pruned_mass, split_heads,
                               subword_length, weight_stats)
from prunelab.targets import kind_and_layer as describe
from prunelab.targets import get_parameter, resolve_targets

Q0 = "encoder.layer.0.attention.self.query.weight"
O0 = "encoder.layer.0.attention.output.dense.weight"


def set_weight(model, name, value):
    target = next(t for t in resolve_targets(model) if t.name == name)
    with torch.no_grad():
        get_parameter(model, target).copy_(value)


def test_weight_stats_match_torch_on_a_known_matrix():
    model = tiny_model("bert")
    known = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32) / 100 - 3.0
    known[0, :4] = 0.0
    set_weight(model, Q0, known)
    stats = weight_stats(model)
    row = next(r for r in stats["targets"] if r["name"] == Q0)
    assert row["mean"] == pytest.approx(float(known.mean()), rel=1e-6)
    assert row["std"] == pytest.approx(float(known.std()), rel=1e-6)
    assert row["mean_abs"] == pytest.approx(float(known.abs().mean()), rel=1e-6)
    assert row["min"] == pytest.approx(-2.96) and row["max"] == pytest.approx(float(known.max()))
    assert row["sparsity"] == pytest.approx(5 / 1024)  # the four set to 0, and 300 / 100 - 3 and row["shape"] == [32, 32] and row["kind"] == "query"

    # pooled per kind and overall = statistics of the concatenation
    query = torch.cat([get_parameter(model, t).detach().reshape(-1) for t in resolve_targets(model, include="query")])
    assert stats["by_kind"]["query"]["mean"] == pytest.approx(float(query.double().mean()), rel=1e-9)
    assert stats["by_kind"]["query"]["std"] == pytest.approx(float(query.double().std()), rel=1e-9)
    everything = torch.cat([get_parameter(model, t).detach().reshape(-1).double() for t in resolve_targets(model)])
    assert stats["overall"]["numel"] == everything.numel()
    assert stats["overall"]["std"] == pytest.approx(float(everything.std()), rel=1e-9)


@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_pruned_mass_is_the_sum_of_the_smallest_magnitudes(scope):
    model = tiny_model("bert")
    mass = pruned_mass(model, [0.0, 0.3, 1.0], scope=scope)
    rows = {(r["sparsity"], r["kind"]): r for r in mass["rows"]}
    assert all(rows[(0.0, k)]["pruned_mass"] == 0.0 and rows[(0.0, k)]["pruned"] == 0 for k in mass["total_mass"])
    assert rows[(1.0, "all")]["fraction"] == pytest.approx(1.0)
    targets = resolve_targets(model)
    magnitudes = [get_parameter(model, t).detach().abs().reshape(-1).double() for t in targets]
    if scope == "matrix":
        expected = sum(float(m.sort().values[: round(0.3 * m.numel())].sum()) for m in magnitudes)
    else:
        every = torch.cat(magnitudes).sort().values
        expected = float(every[: round(0.3 * every.numel())].sum())
    assert rows[(0.3, "all")]["pruned_mass"] == pytest.approx(expected, rel=1e-9)
    assert rows[(0.3, "all")]["fraction"] == pytest.approx(expected / mass["total_mass"]["all"], rel=1e-9)
    by_kind = sum(rows[(0.3, k)]["pruned_mass"] for k in mass["total_mass"] if k != "all")
    assert by_kind == pytest.approx(expected, rel=1e-9)


def test_split_heads_layouts():
    heads, d_head, d_model = 4, 8, 32
    w = torch.randn(heads * d_head, d_model)
    assert torch.equal(split_heads(w, "query", heads)[2], w[16:24])  # output rows of head 2
    o = torch.randn(d_model, heads * d_head)
    assert torch.equal(split_heads(o, "attention_output", heads)[1], o[:, 8:16].T)  # input columns of head 1
    x = torch.randn(d_model, heads, d_head)  # XLNet
    assert torch.equal(split_heads(x, "key", heads)[3], x[:, 3, :].T)
    with pytest.raises(ValueError, match="has no heads"):
        split_heads(w, "ffn_in", heads)


def test_head_pruning_finds_the_head_of_tiny_weights():
    model = tiny_model("bert")  # 4 heads of 8
    q = torch.randn(32, 32).abs() + 1.0
    q[16:24] = 1e-4  # head 2's rows (query splits output rows)
    set_weight(model, Q0, q)
    o = torch.randn(32, 32).abs() + 1.0
    o[:, 0:8] = 1e-4  # head 0's columns (the attention output splits input columns)
    set_weight(model, O0, o)
    result = head_pruning(model, [0.0, 0.25])
    fractions = {(r["sparsity"], r["name"], r["head"]): r["fraction"] for r in result["rows"]}
    assert [fractions[(0.25, Q0, h)] for h in range(4)] == [0.0, 0.0, 1.0, 0.0]
    assert [fractions[(0.25, O0, h)] for h in range(4)] == [1.0, 0.0, 0.0, 0.0]
    assert all(v == 0.0 for (s, _, _), v in fractions.items() if s == 0.0)
    summary = {(r["sparsity"], r["kind"]): r for r in result["summary"]}
    assert summary[(0.25, "all")]["max"] == 1.0 and summary[(0.25, "all")]["min"] == 0.0
    assert summary[(0.25, "query")]["mean"] == pytest.approx(0.25)  # every matrix prunes exactly 25%
    assert result["heads"] == 4


def test_head_pruning_on_xlnet_three_dimensional_weights():
    model = tiny_model("xlnet")
    k = torch.randn(32, 4, 8).abs() + 1.0
    k[:, 1, :] = 1e-4
    with torch.no_grad():
        model.layer[1].rel_attn.k.copy_(k)
    result = head_pruning(model, [0.25])
    row = [r["fraction"] for r in result["rows"] if r["name"] == "layer.1.rel_attn.k"]
    assert row == [0.0, 1.0, 0.0, 0.0]
    assert {r["kind"] for r in result["summary"]} >= {"relative_position", "all"}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_key_heatmap_puts_heads_side_by_side(model_type):
    model = tiny_model(model_type)
    data = key_heatmap(model, 1)
    assert tuple(data["magnitude"].shape) == (32, 32) and data["heads"] == 4 and data["d_head"] == 8
    key = next(t for t in resolve_targets(model, include="key", layers=[1]) if t.kind == "key")
    per_head = split_heads(get_parameter(model, key).detach().abs(), "key", 4)
    for h in range(4):
        assert torch.equal(data["magnitude"][:, 8 * h:8 * (h + 1)], per_head[h].T)
        assert data["head_mean_abs"][h] == pytest.approx(float(per_head[h].mean()))


class FakeTokenizer:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_embedding_heatmap_sorts_rows_by_subword_length(bert_dir):
    from prunelab.artifact import load_model

    model, tokenizer = load_model(str(bert_dir))
    data = embedding_heatmap(model, tokenizer)
    lengths = data["lengths"]
    assert bool((lengths[1:] >= lengths[:-1]).all()) and len(lengths) == len(tokenizer)
    weight = model.bert.embeddings.word_embeddings.weight.detach()
    for i in (0, 10, len(lengths) - 1):
        token = tokenizer.convert_ids_to_tokens(int(data["token_ids"][i]))
        assert int(lengths[i]) == subword_length(token)
        assert torch.equal(data["magnitude"][i], weight[data["token_ids"][i]].abs())
    assert sum(b["count"] for b in data["by_length"]) == len(lengths)
    assert subword_length("##ing") == 3 and subword_length("\u2581the") == 3 and subword_length("##") == 2
    with pytest.raises(ValueError, match="has no tokenizer"):
        embedding_heatmap(model, None)
    with pytest.raises(ValueError, match="a tokenizer of 3 entries for 64 embeddings"):
        embedding_heatmap(model, FakeTokenizer(3))


def test_describe_and_packaged_sample():
    assert describe("encoder.layer.3.intermediate.dense.weight") == ("ffn_in", 3)
    assert describe("layer.0.rel_attn.r") == ("relative_position", 0)
    assert describe("classifier.weight") == (None, None)
    texts = load_texts()
    assert len(texts) >= 90 and all(t.strip() == t and t for t in texts)
    assert len(load_texts(max_texts=5)) == 5
