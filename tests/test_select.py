import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunelab.select import _to_keys_, compute_masks, num_to_prune


def weights(seed=0, shapes=((7, 5), (3, 4, 2), (10,), (1, 1))):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(shape, generator=g) for i, shape in enumerate(shapes)}


def pruned(mask):
    return int((~mask).sum())


@settings(max_examples=60, deadline=None)
@given(sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 10_000), criterion=st.sampled_from(["magnitude", "random"]),
       ties=st.booleans())
def test_exact_counts_every_scope(sparsity, seed, criterion, ties):
    w = weights(seed)
    if ties:  # many equal magnitudes, the hard case for thresholds
        w = {n: t.round() for n, t in w.items()}
    matrix = compute_masks(w, sparsity, criterion=criterion, scope="matrix", seed=seed)
    for name, t in w.items():
        assert pruned(matrix[name]) == round(sparsity * t.numel())
        assert matrix[name].shape == t.shape and matrix[name].dtype == torch.bool
    glob = compute_masks(w, sparsity, criterion=criterion, scope="global", seed=seed)
    assert sum(pruned(m) for m in glob.values()) == round(sparsity * sum(t.numel() for t in w.values()))
    rows = compute_masks(w, sparsity, criterion=criterion, scope="row", seed=seed)
    for name, t in w.items():  # exact per target, and each row within one of round(s * cols)
        assert pruned(rows[name]) == round(sparsity * t.numel())
        per_row = (~rows[name]).reshape(-1, t.shape[-1]).sum(1)
        assert int((per_row - sparsity * t.shape[-1]).abs().max()) <= 1


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_magnitude_prunes_the_smallest(sparsity, scope):
    w = weights(1, shapes=((64, 48), (100,), (16, 4, 8)))
    masks = compute_masks(w, sparsity, scope=scope)
    groups = [list(w)] if scope == "global" else [[n] for n in w]
    for group in groups:
        mags = torch.cat([w[n].abs().flatten() for n in group])
        keep = torch.cat([masks[n].flatten() for n in group])
        if 0 < sparsity < 1:
            assert mags[~keep].max() <= mags[keep].min()
        assert pruned(keep) == num_to_prune(sparsity, mags.numel())


def test_ties_are_broken_by_position():
    w = {"a": torch.ones(4), "b": torch.ones(4)}
    glob = compute_masks(w, 0.75, scope="global")  # 6 of 8 equal scores: the first 6 positions go
    assert glob["a"].tolist() == [False] * 4 and glob["b"].tolist() == [False, False, True, True]
    assert compute_masks(w, 0.5, scope="matrix")["b"].tolist() == [False, False, True, True]


def test_keys_preserve_order_of_negative_and_positive_scores():
    values = torch.tensor([-3.5, -1.0, -0.0, 0.0, 1e-30, 2.0, float("inf"), -float("inf"), -1e-30])
    keys = _to_keys_(values.clone(), "x")
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(values, stable=True))


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="NaN"):
        compute_masks({"w": torch.tensor([1.0, float("nan")])}, 0.5)


def test_random_is_seeded_reproducible_and_nested():
    w = weights(2)
    a = compute_masks(w, 0.4, criterion="random", seed=7)
    assert all(torch.equal(a[n], compute_masks(w, 0.4, criterion="random", seed=7)[n]) for n in w)
    assert any(not torch.equal(a[n], compute_masks(w, 0.4, criterion="random", seed=8)[n]) for n in w)
    b = compute_masks(w, 0.8, criterion="random", seed=7)
    assert all(bool((b[n] <= a[n]).all()) for n in w)  # everything pruned at 40% is pruned at 80%


def test_monotone_previous_masks_stay_pruned():
    w = weights(3, shapes=((50,),))
    first = compute_masks(w, 0.3, criterion="random", seed=1)
    second = compute_masks(w, 0.5, previous=first)  # magnitude now, but earlier prunes stay
    assert bool((second["w0"] <= first["w0"]).all()) and pruned(second["w0"]) == 25
    with pytest.raises(ValueError, match="already pruned and masks are monotone"):
        compute_masks(w, 0.1, previous=first)


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.2}, r"sparsity 1.2 is outside \[0, 1\]"),
    ({"sparsity": -0.1}, "outside"),
    ({"sparsity": 0.5, "scope": "layer"}, "unknown scope 'layer'; allowed: matrix, global, row"),
    ({"sparsity": 0.5, "criterion": "snip"}, "unknown criterion 'snip'; allowed: magnitude, movement, random, wanda"),
    ({"sparsity": 0.5, "criterion": "movement"}, "movement scores of .* are missing"),
    ({"sparsity": 0.5, "criterion": "wanda"}, "Wanda needs the input norms"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_masks(weights(), **kwargs)


def test_half_precision_weights():
    w = {n: t.to(torch.bfloat16) for n, t in weights(4).items()}
    masks = compute_masks(w, 0.5, scope="global")
    assert sum(pruned(m) for m in masks.values()) == round(0.5 * sum(t.numel() for t in w.values()))
