"""The criteria beside magnitude: Wanda and SparseGPT (one-shot over calibration data), movement (while training).

Each test asserts what fails if the criterion breaks: the formula, the reconstruction, exact counts, the
accumulated scores, and bad input refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import MODEL_TYPES, batch, tiny_model
from glue_fixtures import glue_dir, save_tiny, write_corpus  # noqa: F401 (fixture)
from prunelab import Pruner, PruningConfig, resolve_targets
from prunelab.cli import main
from prunelab.methods.layerwise import linear_targets
from prunelab.methods.sparsegpt import sparsegpt_masks, sparsegpt_solve
from prunelab.methods.wanda import wanda_masks
from prunelab.scores import wanda
from prunelab.select import compute_masks, num_to_prune
from prunelab.errors import InputError


def calibration(model_type: str, n: int = 3) -> list[dict]:
    batches = [batch(model_type, size=4, length=10, seed=s) for s in range(n)]
    for b in batches:
        b["attention_mask"][:, 7:] = 0  # padding at the end of every sequence
    return batches


# -- Wanda ------------------------------------------------------------------------------------------


def test_wanda_scores_are_weight_magnitude_times_input_norm():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    x = torch.tensor([[1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])  # two tokens, three input features
    norms = x.pow(2).sum(0).sqrt()  # ||X_j||_2 = (sqrt 5, 1, 2)
    expected = torch.tensor([[5 ** 0.5, 2.0, 6.0], [4 * 5 ** 0.5, 5.0, 12.0]])
    assert torch.allclose(wanda(weight, stat=norms), expected)
    # the paper's group: per output row, the lowest score goes: feature 1 in both rows, though by magnitude alone
    # both rows would lose feature 0
    keep = compute_masks({"w": weight}, 1 / 3, criterion="wanda", scope="row", stats={"w": norms})["w"]
    assert keep.tolist() == [[True, False, True], [True, False, True]]
    assert compute_masks({"w": weight}, 1 / 3, scope="row")["w"].tolist() == [[False, True, True], [False, True, True]]


def test_wanda_gathers_norms_over_real_tokens_only(monkeypatch):
    """Padding never enters the statistics: padded positions filled with huge ids change nothing."""
    model = tiny_model("bert")
    clean = calibration("bert")
    noisy = [{**b, "input_ids": torch.where(b["attention_mask"].bool(), b["input_ids"], torch.full_like(b["input_ids"], 5))}
             for b in clean]
    targets = resolve_targets(model)
    a = wanda_masks(tiny_model("bert"), clean, targets, 0.5)
    b = wanda_masks(tiny_model("bert"), noisy, targets, 0.5)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@torch.no_grad()
def plain_wanda(model, batches, targets, counts, sequential=True) -> dict[str, torch.Tensor]:
    """Wanda written plainly, as its reference code: for each encoder layer in order, the whole model runs on the
    batches (`sequential`: with the layers before it already pruned; otherwise dense); each linear's input rows at
    real tokens give ||X_j||_2; output row r of target n loses its counts[n][r] lowest |W_rj| · ||X_j||_2."""
    masks = {}
    by_layer = linear_targets(model, targets)
    for layer in sorted(by_layer):
        rows, current = {name: [] for name in by_layer[layer]}, {}
        hooks = [m.register_forward_pre_hook(lambda m, args, name=name: rows[name].append(args[0][current["keep"]]))
                 for name, m in by_layer[layer].items()]
        for b in batches:
            current["keep"] = b["attention_mask"].bool()
            model(**b)
        for h in hooks:
            h.remove()
        for name, module in by_layer[layer].items():
            score = module.weight.abs() * torch.cat(rows[name]).pow(2).sum(0).sqrt()
            masks[name] = torch.ones_like(score, dtype=torch.bool)
            for r, k in enumerate(counts[name].tolist()):
                masks[name][r, score[r].topk(k, largest=False).indices] = False
            if sequential:
                module.weight.mul_(masks[name])
    return masks


def test_wanda_is_its_formula_over_the_inputs_of_the_already_pruned_model():
    """The gathered statistic is the L2 norm of each input feature over real tokens, taken layer by layer from the
    model as the earlier layers' pruning left it. (The counts per row are the implementation's: 0.5 of 37 columns
    is 18 in some rows and 19 in others, so that the matrix's count is exact.)"""
    targets = resolve_targets(tiny_model("bert"))
    got = wanda_masks(tiny_model("bert"), calibration("bert"), targets, 0.5)
    counts = {n: (~m).sum(1) for n, m in got.items()}
    assert all(int(c.sum()) == num_to_prune(0.5, got[n].numel()) for n, c in counts.items())
    expected = plain_wanda(tiny_model("bert"), calibration("bert"), targets, counts)
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    # every layer's norms from the dense model instead: the first layer agrees, a later one does not
    dense = plain_wanda(tiny_model("bert"), calibration("bert"), targets, counts, sequential=False)
    first = linear_targets(tiny_model("bert"), targets)[0]
    assert all(torch.equal(got[n], dense[n]) for n in first) and any(not torch.equal(got[n], dense[n]) for n in got)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_wanda_prunes_every_linear_target_exactly(model_type, sparsity):
    model = tiny_model(model_type)
    targets = resolve_targets(model)
    masks = wanda_masks(model, calibration(model_type), targets, sparsity, scope="row")
    linear = {n for layer in linear_targets(model, targets).values() for n in layer}
    assert set(masks) == linear and linear  # every encoder linear layer, nothing else
    for t in targets:
        if t.name in masks:
            assert int((~masks[t.name]).sum()) == num_to_prune(sparsity, t.numel)
            assert bool((model.get_parameter(t.param_name)[~masks[t.name]] == 0).all())


# -- SparseGPT --------------------------------------------------------------------------------------


def naive_obs(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Optimal Brain Surgeon one weight at a time with the full inverse of the remaining columns' Hessian: for
    column j, each pruned w_rj is removed and its error spread over columns j.. by [H_F^-1]_{0,:} / [H_F^-1]_00."""
    w = weight.double().clone()
    h = hessian.double().clone()
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    for j in range(w.shape[1]):
        inverse = torch.linalg.inv(h[j:, j:])
        for r in range(w.shape[0]):
            if not keep[r, j]:
                w[r, j:] -= w[r, j] / inverse[0, 0] * inverse[0, :]
    return torch.where(keep, w, torch.zeros_like(w)).float()


def layer_problem(rows=6, cols=12, tokens=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g)  # correlated inputs
    return torch.randn(rows, cols, generator=g), x, 2.0 * x.t() @ x / tokens


def test_sparsegpt_matches_naive_obs_on_a_tiny_layer():
    weight, x, hessian = layer_problem()
    pruned, keep = sparsegpt_solve(weight, hessian, 0.5, blocksize=12, percdamp=0.01)
    assert torch.allclose(pruned, naive_obs(weight, hessian, keep, 0.01), atol=1e-5)
    pruned4, keep4 = sparsegpt_solve(weight, hessian, 0.5, blocksize=4, percdamp=0.01)  # blocks: the same updates
    assert torch.allclose(pruned4, naive_obs(weight, hessian, keep4, 0.01), atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_sparsegpt_reconstructs_better_than_magnitude_at_the_same_size(sparsity):
    weight, x, hessian = layer_problem(rows=16, cols=32, tokens=200)
    pruned, keep = sparsegpt_solve(weight, hessian, sparsity, blocksize=8)
    magnitude_keep = compute_masks({"w": weight}, sparsity)["w"]
    assert int((~keep).sum()) == int((~magnitude_keep).sum()) == num_to_prune(sparsity, weight.numel())
    error = torch.linalg.norm(x @ (weight - pruned).t())
    magnitude_error = torch.linalg.norm(x @ (weight * magnitude_keep).t() - x @ weight.t())
    assert error < magnitude_error


def test_sparsegpt_2_4_keeps_two_of_every_four():
    weight, x, hessian = layer_problem(rows=8, cols=16)
    pruned, keep = sparsegpt_solve(weight, hessian, 0.5, structure="2:4", blocksize=8)
    assert bool((keep.view(8, 4, 4).sum(-1) == 2).all()) and bool((pruned[~keep] == 0).all())


def test_sparsegpt_n_m_is_exact_per_group_when_m_does_not_divide_the_block():
    weight, x, hessian = layer_problem(rows=8, cols=12)
    pruned, keep = sparsegpt_solve(weight, hessian, 2 / 3, structure="1:3", blocksize=8)  # groups of 3, blocks of 8
    assert bool((keep.view(8, 4, 3).sum(-1) == 1).all()) and bool((pruned[~keep] == 0).all())


def test_sparsegpt_is_deterministic_and_exact_on_every_architecture():
    for model_type in MODEL_TYPES:
        results = []
        for _ in range(2):
            model = tiny_model(model_type)
            targets = resolve_targets(model)
            masks = sparsegpt_masks(model, calibration(model_type), targets, 0.6, blocksize=8)
            results.append((masks, {t.name: model.get_parameter(t.param_name).detach().clone() for t in targets}))
            for t in targets:
                if t.name in masks:
                    assert int((~masks[t.name]).sum()) == num_to_prune(0.6, t.numel), (model_type, t.name)
                    assert bool((model.get_parameter(t.param_name)[~masks[t.name]] == 0).all())
        (m1, w1), (m2, w2) = results
        assert all(torch.equal(m1[n], m2[n]) for n in m1) and all(torch.equal(w1[n], w2[n]) for n in w1)


# -- the prune command ------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("structure", [None, "2:4"])
def test_prune_with_calibration_writes_an_exact_artifact(tmp_path, glue_dir, criterion, structure, capsys):  # noqa: F811
    model = save_tiny(tmp_path / "m")
    out = tmp_path / "out"
    shape = ["--structure", structure, "--include", "query,key,value,attention_output,ffn_in"] if structure else \
        ["--sparsity", "0.5"]
    assert main(["prune", str(model), "--criterion", criterion, *shape, "--calibration", "rte", "--data-dir",
                 str(glue_dir), "--calibration-samples", "8", "--max-seq-len", "32", "--out", str(out)]) == 0
    info = json.loads((out / "prunelab.json").read_text())
    assert info["calibration"]["samples"] == 8 and info["config"]["criterion"] == criterion
    assert info["fallback"]["targets"] == ([] if structure else ["embeddings.word_embeddings.weight"])  # by magnitude
    for row in info["report"]["targets"]:
        assert row["zeros"] == num_to_prune(0.5, row["numel"])
    from prunelab.masks_io import load_masks

    for name, mask in load_masks(out / "masks.safetensors").items():
        if structure:
            assert bool((mask.view(mask.shape[0], -1, 4).sum(-1) == 2).all())


def test_prune_with_a_calibration_corpus(tmp_path):
    model = save_tiny(tmp_path / "m")
    corpus = write_corpus(tmp_path / "c.txt", lines=60)
    assert main(["prune", str(model), "--criterion", "wanda", "--sparsity", "0.5", "--calibration-corpus", str(corpus),
                 "--calibration-samples", "4", "--max-seq-len", "16", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "prunelab.json").read_text())["calibration"]["source"] == "corpus"


def test_prune_by_sparsegpt_with_compress_loads_back_its_updated_weights(tmp_path):
    """--compress stores SparseGPT's result (its kept weights updated, not the dense ones) bit for bit."""
    import prunelab

    model, corpus = save_tiny(tmp_path / "m"), write_corpus(tmp_path / "c.txt", lines=60)
    common = ["prune", str(model), "--criterion", "sparsegpt", "--sparsity", "0.5", "--calibration-corpus", str(corpus),
              "--calibration-samples", "4", "--max-seq-len", "16"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--compress", "--out", str(tmp_path / "small")]) == 0
    plain, small = prunelab.from_pretrained(tmp_path / "plain"), prunelab.from_pretrained(tmp_path / "small")
    dense = prunelab.from_pretrained(model).model.state_dict()
    assert plain.masks.keys() == small.masks.keys() and all(torch.equal(plain.masks[n], small.masks[n]) for n in plain.masks)
    weights = small.model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in plain.model.state_dict().items())
    name = "bert.encoder.layer.0.attention.self.query.weight"
    kept = small.masks["encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(weights[name][kept], dense[name][kept])  # SparseGPT moved the weights it kept


@pytest.mark.parametrize("argv, says", [
    (["prune", "{m}", "--criterion", "wanda", "--sparsity", "0.5", "--out", "{o}"], "--criterion wanda needs calibration data"),
    (["prune", "{m}", "--criterion", "sparsegpt", "--sparsity", "0.5", "--calibration", "rte", "--data-dir", "{g}",
      "--out", "{o}"], "calibration asks for 128 sequences but the training split of rte gives 16"),
    (["prune", "{m}", "--criterion", "movement", "--sparsity", "0.5", "--out", "{o}"],
     "--criterion movement does not apply to prunelab prune (it accumulates its scores while the model trains"),
    (["prune", "{m}", "--criterion", "wanda", "--sparsity", "0.5", "--calibration-corpus", "{e}", "--out", "{o}"],
     "has no text"),  # an empty calibration set
    (["prune", "{m}", "--sparsity", "0.5", "--calibration", "rte", "--data-dir", "{g}", "--out", "{o}"],
     "--calibration applies to --criterion wanda or sparsegpt, not magnitude"),
    (["prune", "{m}", "--criterion", "sparsegpt", "--scope", "global", "--sparsity", "0.5", "--calibration", "rte",
      "--data-dir", "{g}", "--out", "{o}"], "sparsegpt chooses each matrix's mask block by block"),
    (["prune", "{m}", "--criterion", "wanda", "--scope", "global", "--sparsity", "0.5", "--calibration", "rte",
      "--data-dir", "{g}", "--out", "{o}"], "wanda prunes layer by layer"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "2", "--sparsity", "0.5", "--criterion", "wanda", "--out", "{o}"],
     "--criterion wanda does not apply to prunelab pretrain (it prunes one-shot over calibration data"),
    (["finetune", "{m}", "--task", "rte", "--data-dir", "{g}", "--sparsity", "0.5", "--prune-after-epochs", "1",
      "--criterion", "sparsegpt", "--out", "{o}"],
     "--criterion sparsegpt does not apply to prunelab finetune"),
    (["distill-prune", "{m}", "--teacher", "none", "--task", "rte", "--data-dir", "{g}", "--sparsity", "0.5",
      "--criterion", "wanda", "--out", "{o}"], "--criterion wanda does not apply to prunelab distill-prune"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "2", "--sparsity", "0.5", "--criterion", "movement",
      "--schedule", "oneshot", "--out", "{o}"], "prunes at --prune-start 0, before any step has given its scores a value"),
    # without --prune-after-epochs finetune prunes nothing: a criterion or scope there would be ignored, so is refused
    (["finetune", "{m}", "--task", "rte", "--data-dir", "{g}", "--criterion", "movement", "--out", "{o}"],
     "--criterion movement chooses what finetune prunes, and without --prune-after-epochs"),
    (["finetune", "{m}", "--task", "rte", "--data-dir", "{g}", "--scope", "global", "--out", "{o}"],
     "--scope global chooses what finetune prunes, and without --prune-after-epochs"),
])
def test_bad_criterion_input_is_one_line_and_writes_nothing(tmp_path, glue_dir, capsys, argv, says):  # noqa: F811
    names = {"m": str(save_tiny(tmp_path / "m")), "o": str(tmp_path / "out"), "g": str(glue_dir),
             "c": str(write_corpus(tmp_path / "c.txt")), "e": str(tmp_path / "empty.txt")}
    (tmp_path / "empty.txt").write_text("")
    capsys.readouterr()  # what saving the fixtures printed
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists()


# -- movement -----------------------------------------------------------------------------------------


def test_movement_scores_are_minus_the_sum_of_weight_times_gradient():
    torch.manual_seed(0)
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5, criterion="movement", schedule="cubic", end_step=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {t.name: torch.zeros(t.shape) for t in pruner.targets}
    for step in range(3):
        out = model(**batch("bert", seed=step)).last_hidden_state.pow(2).mean()
        out.backward()
        for t in pruner.targets:
            p = model.get_parameter(t.param_name)
            if p.grad is not None:  # the pooler is not on this loss's path
                expected[t.name] -= p.detach() * p.grad  # before the optimizer moves it
        optimizer.step()
        optimizer.zero_grad()
    for name, score in expected.items():
        assert torch.allclose(pruner.movement[name], score, atol=1e-6)


def test_movement_refuses_to_prune_before_its_scores_have_a_value():
    """At step 0 every score is 0: a top-k there would choose by position, so the pruner refuses (the 0 sparsity of a
    cubic schedule's first step is fine); after one backward pass it prunes."""
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5, criterion="movement", schedule="oneshot"))
    with pytest.raises(InputError, match="movement's scores are all zero"):
        pruner.step(0)
    assert not pruner.masks
    Pruner(tiny_model("bert"), PruningConfig(sparsity=0.5, criterion="movement", schedule="cubic", end_step=10)).step(0)
    model(**batch("bert", seed=0)).last_hidden_state.pow(2).mean().backward()
    pruner.step(0)
    assert pruner.mask_sparsity() == pytest.approx(0.5, abs=1e-3)


def test_movement_n_m_keeps_the_two_highest_scores_of_every_four():
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5, structure="2:4", criterion="movement", schedule="oneshot",
                                         start_step=1, include=["query", "ffn_in"]))
    model(**batch("bert", seed=0)).last_hidden_state.pow(2).mean().backward()
    scores = {n: s.clone() for n, s in pruner.movement.items()}
    pruner.step(1)
    for name, keep in pruner.masks.items():
        groups, kept = scores[name].reshape(-1, 4), keep.reshape(-1, 4)
        assert bool((kept.sum(1) == 2).all()), name
        expected = torch.zeros_like(kept).scatter_(1, groups.topk(2, dim=1).indices, True)
        assert torch.equal(kept, expected), name


def test_movement_prunes_weights_moving_to_zero_that_magnitude_keeps():
    """A toy regression whose gradient pulls the large weights to zero and pushes the small ones out: movement
    prunes the large shrinking ones, magnitude the small growing ones."""
    torch.manual_seed(0)
    model = tiny_model("bert")
    name = "encoder.layer.0.output.dense.weight"
    target = next(t for t in resolve_targets(model) if t.name == name)
    weight = model.get_parameter(target.param_name)
    with torch.no_grad():
        weight.copy_(torch.linspace(0.01, 1.0, weight.numel()).view_as(weight))
    goal = torch.linspace(1.0, 0.01, weight.numel()).view_as(weight)  # large weights should shrink, small ones grow
    config = dict(sparsity=0.5, include=["ffn_out"], layers=[0], schedule="oneshot")
    pruner = Pruner(model, PruningConfig(criterion="movement", **config))
    optimizer = torch.optim.SGD([weight], lr=0.05)
    for _ in range(5):
        (weight - goal).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    magnitude = compute_masks({name: weight.detach()}, 0.5)[name]
    pruner.update_masks(0.5, step=5)
    moved = pruner.masks[name]
    large_first = torch.arange(weight.numel()).view_as(weight) >= weight.numel() // 2
    assert bool(moved[~large_first].all()) and not bool(moved[large_first].any())  # the shrinking half goes
    assert bool(magnitude[large_first].all())  # magnitude keeps those (still the larger weights after 5 steps)


def test_movement_is_the_straight_through_top_k_pruned_weights_keep_learning_scores_and_come_back():
    """Sanh et al.'s hard movement: the mask is the top-k of the scores at every update; a pruned weight keeps its
    value aside, its score goes on learning from that value and the dense gradient, and it returns with it."""
    torch.manual_seed(0)
    model = tiny_model("bert")
    name = "encoder.layer.0.output.dense.weight"
    weight = model.get_parameter(name)
    original = weight.detach().clone()
    pruner = Pruner(model, PruningConfig(criterion="movement", sparsity=0.5, include=["ffn_out"], layers=[0]))
    low = torch.arange(weight.numel(), dtype=torch.float32).view_as(weight) < weight.numel() // 2
    pruner.movement[name].copy_(torch.where(low, -1e-12, 1e-12))  # small beside one step's W·g
    pruner.update_masks(0.5, step=0)
    assert torch.equal(pruner.masks[name], ~low) and bool((weight[low] == 0).all())
    assert torch.equal(pruner.latent[name][low], original[low]) and bool((pruner.latent[name][~low] == 0).all())

    before = pruner.movement[name].clone()
    plain = tiny_model("bert")  # the same masked model without the pruner's hooks: the dense gradient
    plain.load_state_dict(model.state_dict())
    plain(**batch("bert")).last_hidden_state.pow(2).mean().backward()
    model(**batch("bert")).last_hidden_state.pow(2).mean().backward()
    assert bool((weight.grad[low] == 0).all())  # the optimizer sees no gradient where pruned ...
    # ... but the scores do, with the value set aside: a pruned weight's score still moves
    assert torch.allclose(pruner.movement[name], before - original * plain.get_parameter(name).grad, atol=1e-7)
    assert bool((pruner.movement[name][low] != before[low]).any())

    pruner.movement[name].copy_(torch.where(low, 1.0, -1.0))  # the pruned half's scores rose above the kept half's
    pruner.update_masks(0.5, step=10)
    assert torch.equal(pruner.masks[name], low)  # regrown although the config's regrow is False
    assert torch.equal(weight[low].detach(), original[low])  # back with the values they had
    assert bool((weight[~low] == 0).all()) and torch.equal(pruner.latent[name][~low], original[~low])


def test_movement_scores_survive_save_and_load(tmp_path):
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5, criterion="movement", schedule="cubic", end_step=10))
    model(**batch("bert")).last_hidden_state.sum().backward()
    pruner.step(0)
    pruner.update_masks(0.3, step=1)  # the pruned weights' values go aside
    pruner.save(tmp_path / "ckpt")
    resumed = tiny_model("bert")
    resumed.load_state_dict(model.state_dict())  # as a checkpoint holds it: zeros where pruned
    again = Pruner(resumed, PruningConfig(sparsity=0.5, criterion="movement", schedule="cubic", end_step=10))
    again.load(tmp_path / "ckpt")
    assert all(torch.equal(again.movement[n], pruner.movement[n].cpu()) for n in pruner.movement)
    assert any(bool(v.any()) for v in pruner.latent.values())
    assert all(torch.equal(again.latent[n], pruner.latent[n].cpu()) for n in pruner.latent)  # not the zeros it loaded


def test_a_calibrated_criterion_is_refused_by_the_pruners_schedule():
    pruner = Pruner(tiny_model("bert"), PruningConfig(sparsity=0.5, criterion="wanda", schedule="cubic", end_step=10))
    with pytest.raises(ValueError, match="prunes one-shot over calibration data"):
        pruner.step(0)
    assert isinstance(pruner.model, nn.Module)


def test_distill_prune_by_movement_holds_exact_masks_that_plain_transformers_loads(tmp_path, glue_dir, capsys):  # noqa: F811
    import transformers

    from prunelab.masks_io import load_masks

    student = save_tiny(tmp_path / "student")
    masks = {}
    for criterion in ("movement", "magnitude"):
        out = tmp_path / criterion
        assert main(["distill-prune", str(student), "--teacher", "none", "--task", "mrpc", "--data-dir", str(glue_dir),
                     "--sparsity", "0.6", "--criterion", criterion, "--lr", "1e-3", "--epochs", "2", "--batch-size", "4",
                     "--max-seq-len", "16", "--save-model", "--out", str(out)]) == 0
        assert f"({criterion} pruning, task loss only)" in capsys.readouterr().out
        assert json.loads((out / "metrics.json").read_text())["sparsity"] == pytest.approx(0.6, abs=1e-3)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
        masks[criterion] = load_masks(out / "model" / "masks.safetensors")
        for name, mask in masks[criterion].items():
            assert bool((model.bert.get_parameter(name).detach()[~mask] == 0).all())
            assert int((~mask).sum()) == num_to_prune(0.6, mask.numel())
    # the same data, budget and seed: movement chose other weights than magnitude did
    assert any(not torch.equal(masks["movement"][n], masks["magnitude"][n]) for n in masks["movement"])


@pytest.mark.parametrize("criterion", ["movement", "soft-movement"])
def test_distill_prune_by_movement_with_a_real_teacher(tmp_path, glue_dir, capsys, criterion):  # noqa: F811
    """Sanh et al. prune by movement while distilling from the dense model: the teacher's share of the step is
    measured, and the student still ends with exact held masks that plain transformers loads."""
    import transformers

    from prunelab.masks_io import load_masks
    from test_distill import save_teacher

    student = save_tiny(tmp_path / "student")
    teacher = save_teacher(tmp_path / "teacher", student)
    out = tmp_path / "kd"
    assert main(["distill-prune", str(student), "--teacher", str(teacher), "--task", "mrpc", "--data-dir", str(glue_dir),
                 "--sparsity", "0.5", "--criterion", criterion, "--lr", "1e-3", "--epochs", "4", "--prune-end", "0.5",
                 "--batch-size", "4", "--max-seq-len", "16", "--save-model", "--out", str(out)]) == 0
    assert f"(knowledge-aware sparse pruning, {criterion})" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["teacher_share"] < 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    masks = load_masks(out / "model" / "masks.safetensors")
    zeros = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert zeros == pytest.approx(0.5, abs=1e-3)
    for name, mask in masks.items():
        assert bool((model.bert.get_parameter(name).detach()[~mask] == 0).all())


def test_pretrain_by_movement_reaches_the_exact_sparsity(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", str(save_tiny(tmp_path / "m")), "--corpus", str(write_corpus(tmp_path / "c.txt")),
                 "--steps", "4", "--prune-end", "4", "--prune-every", "2", "--sparsity", "0.5", "--criterion", "movement",
                 "--batch-size", "4", "--max-seq-len", "16", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_finetune_pruned_after_fine_tuning_by_movement(tmp_path, glue_dir):  # noqa: F811
    """The scores of the dense epochs choose the mask at the pruning step (the pruner tracks them from the start)."""
    from prunelab.masks_io import load_masks

    model = save_tiny(tmp_path / "m", head="base")
    masks = {}
    for criterion in ("movement", "magnitude"):
        out = tmp_path / criterion
        assert main(["finetune", str(model), "--task", "rte", "--data-dir", str(glue_dir), "--sparsity", "0.5",
                     "--prune-after-epochs", "1", "--epochs", "1", "--criterion", criterion, "--lr", "1e-3",
                     "--batch-size", "4", "--max-seq-len", "16", "--save-model", "--out", str(out)]) == 0
        assert json.loads((out / "metrics.json").read_text())["sparsity"] == pytest.approx(0.5, abs=1e-3)
        masks[criterion] = load_masks(out / "model" / "masks.safetensors")
    assert any(not torch.equal(masks["movement"][n], masks["magnitude"][n]) for n in masks["movement"])


def test_distill_prune_by_soft_movement_saves_exact_zeros_and_reports_its_threshold(tmp_path, glue_dir, capsys):  # noqa: F811
    import transformers

    from prunelab.masks_io import load_masks

    out = tmp_path / "soft"
    assert main(["distill-prune", str(save_tiny(tmp_path / "student")), "--teacher", "none", "--task", "mrpc",
                 "--data-dir", str(glue_dir), "--sparsity", "0.5", "--criterion", "soft-movement", "--lr", "1e-3",
                 "--epochs", "6", "--prune-end", "0.5", "--batch-size", "4", "--max-seq-len", "16", "--band", "0.05",
                 "--logging-steps", "1", "--save-model", "--out", str(out)]) == 0
    assert "(soft-movement pruning, task loss only)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "lr-0.001" / "log_history.json").read_text())["log_history"]
    held = [e["step"] for e in history if "loss" in e and "pruning/sparsity" in e]
    assert metrics["runs"][0]["steps"] == 24 and held == list(range(12, 25))  # fixed at --prune-end, held to the end
    run = metrics["runs"][0]
    assert run["target_sparsity"] == 0.5 and metrics["sparsity"] >= 0.5  # the weights: the masks' zeros, and [PAD]'s row
    assert 0.0 < run["sparsity_at_end_of_training"] < 1.0  # what the learned threshold S > 0 pruned, reported
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")  # no parametrization left
    masks = load_masks(out / "model" / "masks.safetensors")
    zeros = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert zeros == pytest.approx(0.5, abs=1e-6)  # exact over all targets, as every prunelab mask
    for name, mask in masks.items():
        assert bool((model.bert.get_parameter(name).detach()[~mask] == 0).all())


@pytest.mark.parametrize("criterion", ["movement", "soft-movement"])
def test_distill_prune_exclude_keeps_those_kinds_dense(tmp_path, glue_dir, criterion):  # noqa: F811
    from prunelab.masks_io import load_masks

    out = tmp_path / "run"
    assert main(["distill-prune", str(save_tiny(tmp_path / "student")), "--teacher", "none", "--task", "mrpc",
                 "--data-dir", str(glue_dir), "--sparsity", "0.5", "--criterion", criterion, "--lr", "1e-3",
                 "--epochs", "2", "--batch-size", "4", "--max-seq-len", "16", "--exclude", "embeddings,pooler",
                 "--save-model", "--out", str(out)]) == 0
    masks = load_masks(out / "model" / "masks.safetensors")
    assert masks and not any("embeddings" in n or "pooler" in n for n in masks)  # the encoder's linear layers only
    assert all(".encoder.layer." in n or n.startswith("encoder.layer.") for n in masks)
    zeros = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert zeros == pytest.approx(0.5, abs=1e-3)
    config = json.loads((out / "run_config.json").read_text())["config"]
    assert config["exclude"] == ["embeddings", "pooler"]


def test_soft_movement_is_refused_where_it_cannot_run(tmp_path, glue_dir, capsys):  # noqa: F811
    model = str(save_tiny(tmp_path / "m"))
    capsys.readouterr()
    assert main(["prune", model, "--sparsity", "0.5", "--criterion", "soft-movement", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--criterion soft-movement does not apply to prunelab prune" in err
    assert "use pretrain, finetune --prune-after-epochs or distill-prune" in err  # where it runs
    assert not (tmp_path / "out").exists()
