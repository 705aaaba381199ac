"""The analyses on the real pretrained MiniLM-L6 (slow: not in the default run; make test-slow)."""

import copy

import pytest
import torch

from prunelab.analysis import (encode, head_pruning, load_texts, pruned_mass, similarity_curves, sort_order_movement,
                               weight_stats)
from prunelab.artifact import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_minilm_weights_mass_and_heads(minilm):
    model, _ = minilm
    stats = weight_stats(model)
    assert stats["overall"]["numel"] == 22_484_736 and 0.03 < stats["overall"]["std"] < 0.1
    mass = {r["sparsity"]: r for r in pruned_mass(model, [0.0, 0.5, 0.9])["rows"] if r["kind"] == "all"}
    # magnitude pruning removes the light weights: much less mass than the share of weights
    assert mass[0.0]["pruned_mass"] == 0.0 and 0.1 < mass[0.5]["fraction"] < 0.3 and mass[0.9]["fraction"] < 0.9
    summary = [r for r in head_pruning(model, [0.5])["summary"] if r["kind"] == "all"][0]
    assert summary["min"] < 0.5 < summary["max"] and summary["mean"] == pytest.approx(0.5, abs=1e-6)


def test_minilm_similarity_falls_with_sparsity_and_movement_of_a_perturbed_copy(minilm):
    model, tokenizer = minilm
    batches = encode(tokenizer, load_texts(max_texts=32))
    curves = similarity_curves(model, batches, sparsities=[0.0, 0.3, 0.9])["curves"]
    last = [c["mean"][-1] for c in curves]
    assert last[0] == pytest.approx(1.0, abs=1e-5) and last[0] > last[1] > last[2]
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    movement = sort_order_movement(model, other)
    assert 0 < movement["overall"]["mean_abs"] < 5 and movement["overall"]["numel"] == 22_484_736
