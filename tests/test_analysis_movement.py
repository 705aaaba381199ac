import copy

import numpy as np
import pytest
import torch
from conftest import tiny_model

from prunelab.analysis import sort_order_movement, sort_positions
from prunelab.targets import get_parameter, resolve_targets

V1 = "encoder.layer.1.attention.self.value.weight"


def test_sort_positions_of_a_known_vector():
    w = torch.tensor([0.3, -0.1, 0.2, 0.0])
    assert sort_positions(w).tolist() == pytest.approx([100.0, 100 / 3, 200 / 3, 0.0])
    assert sort_positions(torch.tensor([1.0, -1.0, 1.0])).tolist() == [0.0, 50.0, 100.0]  # ties by index
    assert sort_positions(torch.tensor([[5.0]])).tolist() == [0.0]


def test_movement_of_a_known_permutation():
    before = tiny_model("bert")
    after = copy.deepcopy(before)
    n = 32 * 32
    ascending = torch.arange(1, n + 1, dtype=torch.float32).reshape(32, 32)
    with torch.no_grad():
        before.get_parameter(V1).copy_(ascending)
        after.get_parameter(V1).copy_(-ascending.flip(0, 1))  # magnitude order reversed (the sign is irrelevant)
    result = sort_order_movement(before, after)

    delta = (n - 1 - 2 * np.arange(n)) * 100 / (n - 1)  # weight i moves from i to n-1-i
    row = next(r for r in result["targets"] if r["name"] == V1)
    assert row["mean"] == pytest.approx(0.0, abs=1e-6)
    assert row["mean_abs"] == pytest.approx(np.abs(delta).mean(), rel=1e-6)
    assert row["std"] == pytest.approx(delta.std(ddof=1), rel=1e-6)
    assert row["max_abs"] == pytest.approx(100.0)
    others = [r for r in result["targets"] if r["name"] != V1]
    assert others and all(r["mean_abs"] == 0.0 and r["max_abs"] == 0.0 for r in others)

    total = sum(t.numel for t in resolve_targets(before))
    assert result["overall"]["numel"] == total
    assert result["overall"]["mean_abs"] == pytest.approx(np.abs(delta).sum() / total, rel=1e-6)
    assert result["by_kind"]["value"]["mean_abs"] == pytest.approx(np.abs(delta).sum() / (2 * n), rel=1e-6)
    assert sum(result["histogram"]["counts"]) == total
    # the smallest weights of the reversed matrix move up by ~95-100 points, the largest down
    first, last = result["bins"][0], result["bins"][-1]
    assert first["start_lo"] == 0.0 and last["start_hi"] == 100.0
    assert sum(b["count"] for b in result["bins"]) == total
    assert first["mean"] > 0 and last["mean"] < 0 and first["mean_abs"] > 0


def test_movement_matches_a_direct_computation_on_random_changes():
    before = tiny_model("bert", seed=1)
    after = copy.deepcopy(before)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.3 * torch.randn_like(p) * p.abs())
    result = sort_order_movement(before, after, bins=4)
    all_deltas, all_start = [], []
    for t in resolve_targets(before):
        a = get_parameter(before, t).detach().abs().reshape(-1).numpy()
        b = get_parameter(after, t).detach().abs().reshape(-1).numpy()
        pos_a, pos_b = np.empty(a.size), np.empty(b.size)
        pos_a[np.argsort(a, kind="stable")] = np.arange(a.size)
        pos_b[np.argsort(b, kind="stable")] = np.arange(b.size)
        delta = (pos_b - pos_a) * 100 / (a.size - 1)
        row = next(r for r in result["targets"] if r["name"] == t.name)
        assert row["mean_abs"] == pytest.approx(np.abs(delta).mean(), rel=1e-5), t.name
        assert row["std"] == pytest.approx(delta.std(ddof=1), rel=1e-5), t.name
        all_deltas.append(delta)
        all_start.append(np.minimum((pos_a * 4 / (a.size - 1)).astype(int), 3))
    deltas, start = np.concatenate(all_deltas), np.concatenate(all_start)
    assert result["overall"]["std"] == pytest.approx(deltas.std(ddof=1), rel=1e-5)
    for i, b in enumerate(result["bins"]):
        assert b["count"] == int((start == i).sum())
        assert b["mean_abs"] == pytest.approx(np.abs(deltas[start == i]).mean(), rel=1e-5)
    assert result["overall"]["mean_abs"] > 0


def test_scaling_all_weights_moves_nothing():
    before = tiny_model("xlnet")  # 3-D attention weights too
    after = copy.deepcopy(before)
    with torch.no_grad():
        for p in after.parameters():
            p.mul_(-2.0)
    result = sort_order_movement(before, after)
    assert result["overall"]["max_abs"] == 0.0 and result["overall"]["numel"] > 0


def test_different_architectures_are_refused():
    with pytest.raises(ValueError, match="is a bert model and 'b' a distilbert model"):
        sort_order_movement(tiny_model("bert"), tiny_model("distilbert"), name_before="a", name_after="b")
    import transformers

    wider = transformers.AutoModel.from_config(transformers.BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2,
                                                                       num_attention_heads=4, intermediate_size=37))
    with pytest.raises(ValueError, match="differ in architecture"):
        sort_order_movement(tiny_model("bert"), wider)


def test_checkpoints_with_different_heads_compare_their_base_weights():
    base = tiny_model("bert")  # BertModel: parameters named embeddings.*, encoder.*
    classifier = tiny_model("bert", "cls")  # BertForSequenceClassification: bert.embeddings.*, ...
    classifier.bert.load_state_dict(base.state_dict())
    assert sort_order_movement(base, classifier)["overall"]["max_abs"] == 0.0
    with torch.no_grad():
        classifier.bert.encoder.layer[0].intermediate.dense.weight.mul_(torch.rand(37, 32) + 0.5)
    rows = {r["name"]: r for r in sort_order_movement(classifier, base)["targets"]}
    assert rows["encoder.layer.0.intermediate.dense.weight"]["mean_abs"] > 1.0
