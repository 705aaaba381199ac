import copy

import pytest
import torch
from conftest import tiny_model

from prunelab.analysis import compare_masks, load_mask_source, magnitude_masks, mask_difference, random_baseline
from prunelab.masks_io import save_masks

Q = "encoder.layer.0.attention.self.query.weight"
F = "encoder.layer.1.intermediate.dense.weight"


def test_mask_difference_of_masks_with_known_overlap():
    a = {Q: torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool),  # prunes 3 of 8
         F: torch.ones(2, 5, dtype=torch.bool)}
    b = {Q: torch.tensor([[1, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.bool),  # prunes 3 of 8; agrees on one pruned
         F: torch.ones(2, 5, dtype=torch.bool)}
    result = mask_difference(a, b)
    q = next(r for r in result["targets"] if r["name"] == Q)
    assert (q["kind"], q["layer"], q["numel"]) == ("query", 0, 8)
    assert q["sparsity_a"] == q["sparsity_b"] == 3 / 8
    assert q["a_only"] == 2 / 8 and q["b_only"] == 2 / 8 and q["differ"] == 4 / 8
    assert q["a_pruned_b_keeps"] == pytest.approx(2 / 3)
    f = next(r for r in result["targets"] if r["name"] == F)
    assert f["differ"] == 0.0 and f["a_pruned_b_keeps"] == 0.0
    assert result["overall"]["differ"] == pytest.approx(4 / 18)
    assert result["by_kind"]["query"]["differ"] == 0.5 and result["by_kind"]["ffn_in"]["differ"] == 0.0
    assert mask_difference(a, a)["overall"]["differ"] == 0.0
    inverse = {n: ~m for n, m in a.items()}
    assert mask_difference(a, inverse)["overall"]["differ"] == 1.0


def test_random_baseline_is_matched_by_random_masks():
    assert random_baseline(0.5, 0.5) == 0.5 and random_baseline(0.0, 0.3) == pytest.approx(0.3)
    g = torch.Generator().manual_seed(0)
    a = {Q: torch.rand(300, 300, generator=g) >= 0.6}
    b = {Q: torch.rand(300, 300, generator=g) >= 0.6}
    result = mask_difference(a, b)["overall"]
    assert result["differ"] == pytest.approx(result["random_baseline"], abs=0.01)
    assert result["random_baseline"] == pytest.approx(2 * 0.6 * 0.4, abs=0.01)


def test_mismatched_masks_are_refused():
    with pytest.raises(ValueError, match="only in the first"):
        mask_difference({Q: torch.ones(2, 2, dtype=torch.bool), F: torch.ones(1, dtype=torch.bool)},
                        {Q: torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has shape"):
        mask_difference({Q: torch.ones(2, 2, dtype=torch.bool)}, {Q: torch.ones(4, dtype=torch.bool)})


def test_model_before_and_after_training_pruned_at_the_same_sparsity(tmp_path):
    before = tiny_model("bert")
    after = copy.deepcopy(before)
    with torch.no_grad():
        after.get_parameter(F).mul_(torch.rand(after.get_parameter(F).shape) + 0.5)  # only one matrix "trained"
    before.save_pretrained(tmp_path / "before")
    after.save_pretrained(tmp_path / "after")
    result = compare_masks(str(tmp_path / "before"), str(tmp_path / "after"), 0.5)
    rows = {r["name"]: r for r in result["targets"]}
    assert rows[F]["differ"] > 0.05 and rows[F]["sparsity_a"] == rows[F]["sparsity_b"] == pytest.approx(0.5, abs=1e-3)
    assert all(r["differ"] == 0.0 for n, r in rows.items() if n != F)
    assert result["sparsity"] == 0.5 and result["overall"]["differ"] == pytest.approx(
        rows[F]["differ"] * rows[F]["numel"] / result["overall"]["numel"])


def test_mask_sources(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "m")
    masks = magnitude_masks(model, 0.4)
    save_masks(masks, tmp_path / "masks.safetensors")
    loaded, none = load_mask_source(str(tmp_path / "masks.safetensors"))
    assert none is None and all(torch.equal(loaded[n], masks[n]) for n in masks)
    with pytest.raises(ValueError, match="is a masks file; --sparsity applies only to models"):
        load_mask_source(str(tmp_path / "masks.safetensors"), 0.5)
    with pytest.raises(ValueError, match="has no masks.safetensors; pass --sparsity"):
        load_mask_source(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="sparsity 1.5 is outside"):
        load_mask_source(str(tmp_path / "m"), 1.5)
    from_model, _ = load_mask_source(str(tmp_path / "m"), 0.4)
    assert mask_difference(from_model, loaded)["overall"]["differ"] == 0.0
