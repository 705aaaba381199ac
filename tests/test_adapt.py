"""Adapting by pruning: the straight-through mask, the MaskLearner in a plain loop, and the Trainer pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from conftest import VOCAB, tiny_model
from glue_fixtures import glue_dir, save_tiny  # noqa: F401
from prunelab.methods.learned_masks import MaskLearner, straight_through_mask
from prunelab.artifact import from_pretrained as load_artifact
from prunelab.cli import main
from prunelab.select import compute_masks
from prunelab.targets import resolve_targets
from prunelab.pipelines.adapt_by_pruning import AdaptConfig, adapt


def test_straight_through_mask_is_hard_forward_and_sigmoid_backward():
    scores = torch.tensor([-0.02, 0.0, 0.01, 0.3], requires_grad=True)
    mask = straight_through_mask(scores, None, 2.0)
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0]
    mask.sum().backward()
    s = [1 / (1 + math.exp(-2.0 * x)) for x in (-0.02, 0.0, 0.01, 0.3)]
    assert scores.grad.tolist() == pytest.approx([2.0 * v * (1 - v) for v in s], rel=1e-6)
    soft = straight_through_mask(torch.tensor([0.01]), 100.0, 1.0)
    assert soft.item() == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6)  # a finite t_forward: sigmoid(t · θ)


def _cls_model(seed: int = 0, init: float = 0.02):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, num_labels=2, initializer_range=init,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def test_learner_starts_dense_freezes_targets_and_finishes_to_plain_keys():
    model = _cls_model().eval()
    ids = torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))
    before, keys = model(input_ids=ids).logits.detach(), set(model.state_dict())
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = {t.name for t in resolve_targets(model)}
    learner = MaskLearner(model, 0.5, seed=0)
    assert torch.allclose(model(input_ids=ids).logits, before)  # θ ~ N(0.01, 0.001) > 0: the dense model
    assert learner.realized_sparsity() == 0.0 and learner.direction == 1
    assert all(not w.requires_grad for w in learner.frozen_weights().values())
    scores = learner.scores()
    assert set(scores) == names
    assert all(s.requires_grad and s.dtype == torch.float32 for s in scores.values())

    with torch.no_grad():  # half the scores below zero, by hand
        for s in scores.values():
            s.copy_(torch.randn(s.shape, generator=torch.Generator().manual_seed(1)))
    masks = learner.finish()
    assert set(model.state_dict()) == keys  # no parametrization left behind
    for t in learner.targets:
        assert torch.equal(model.get_parameter(t.param_name), pretrained[t.param_name] * masks[t.name])
        assert torch.equal(masks[t.name], scores[t.name] > 0)


def test_exact_final_masks_prune_exactly_the_target_lowest_scores():
    model = _cls_model()
    learner = MaskLearner(model, 0.37, seed=3)
    with torch.no_grad():
        for s in learner.parameters():
            s.normal_(0.0, 1.0)
    masks = learner.masks(exact=True)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.37 * total)
    scores = [s.detach() for s in learner.parameters()]
    kept_min = min(float(s[m].min()) for s, m in zip(scores, masks.values()))
    pruned_max = max(float(s[~m].max()) for s, m in zip(scores, masks.values()))
    assert pruned_max <= kept_min  # the lowest scores are the ones pruned


def test_penalty_direction_follows_the_target_with_a_band():
    learner = MaskLearner(_cls_model(), 0.5, penalty=0.1, band=0.05)
    scores = list(learner.parameters())
    total = sum(s.detach().sum() for s in scores)
    assert learner.penalty().item() == pytest.approx(0.1 * float(total), rel=1e-5)

    def set_sparsity(fraction):
        with torch.no_grad():
            for s in scores:
                flat = s.view(-1)
                flat.fill_(0.01)
                flat[: round(fraction * flat.numel())] = -0.01

    for fraction, direction in [(0.3, 1), (0.52, 0), (0.7, -1)]:
        set_sparsity(fraction)
        figures = learner.update(10)
        assert learner.direction == direction and figures["adapt/penalty_direction"] == direction
        assert figures["adapt/sparsity"] == pytest.approx(fraction, abs=0.01)
    assert learner.penalty().item() == pytest.approx(-0.1 * float(sum(s.detach().sum() for s in scores)), rel=1e-5)
    ramped = MaskLearner(_cls_model(), 0.5, ramp_steps=100)
    assert ramped.update(0)["adapt/target_sparsity"] == 0.0 and ramped.update(50)["adapt/target_sparsity"] == pytest.approx(0.4375)


def _separable(n: int, seed: int):
    """Label 1 iff token 7 occurs in the sequence: a task a random frozen encoder does not solve by itself."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, VOCAB, (n, 10), generator=g)
    labels = torch.arange(n) % 2
    positions = torch.randint(1, 10, (n,), generator=g)
    ids[labels == 1, positions[labels == 1]] = 7
    ids[:, 0] = 2  # [CLS]
    return ids, labels


def _train(model, params, ids, labels, steps, learner=None):
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(ids), (32,), generator=g)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        if learner is not None:
            loss = loss + learner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if learner is not None:
            learner.update(step)
    model.eval()


def _accuracy(model, ids, labels) -> float:
    with torch.no_grad():
        return float((model(input_ids=ids).logits.argmax(-1) == labels).float().mean())


def test_learned_mask_beats_a_random_mask_of_equal_sparsity_with_frozen_weights():
    # Wide random weights (init 0.3), so the frozen encoder's features vary with the input and a mask can route them.
    train, test = _separable(256, 0), _separable(256, 1)
    learned = _cls_model(seed=0, init=0.3)
    learned.base_model.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in learned.base_model.named_parameters()}
    learner = MaskLearner(learned, 0.5, penalty=1e-4, ramp_steps=40, seed=0)
    _train(learned, [*learner.parameters(), *learned.classifier.parameters()], *train, steps=80, learner=learner)
    learner.finish(exact=True)
    for name, p in learned.base_model.named_parameters():  # the weights did not move: only masks were learned
        keep = p != 0
        assert torch.equal(p[keep], frozen[name][keep])

    random_masked = _cls_model(seed=0, init=0.3)
    random_masked.base_model.requires_grad_(False)
    targets = resolve_targets(random_masked)
    weights = {t.name: random_masked.get_parameter(t.param_name) for t in targets}
    masks = compute_masks(weights, 0.5, criterion="random", scope="global", seed=0)
    with torch.no_grad():
        for name, w in weights.items():
            w.mul_(masks[name])
    _train(random_masked, list(random_masked.classifier.parameters()), *train, steps=80)

    learned_acc, random_acc = _accuracy(learned, *test), _accuracy(random_masked, *test)
    assert learned_acc > random_acc + 0.1, (learned_acc, random_acc)


def test_adapt_pipeline_keeps_weights_reaches_the_sparsity_and_saves_an_artifact(tmp_path, glue_dir):  # noqa: F811
    model_dir = save_tiny(tmp_path / "tiny", head="base")
    pretrained = transformers.AutoModel.from_pretrained(model_dir).state_dict()
    cfg = AdaptConfig(model=str(model_dir), task="SST-2", out=str(tmp_path / "out"), data_dir=str(glue_dir), sparsity=0.3,
                      exact=True, epochs=2, batch_size=4, lrs=[3e-3, 1e-2], head_lr=1e-2, penalty=1e-3, progress=False,
                      save_model=True)
    metrics = adapt(cfg)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["best_lr"] == metrics["best_lr"]
    assert len(metrics["runs"]) == 2
    assert all(r["sparsity_at_end_of_training"] > 0 for r in metrics["runs"])  # the scores did cross zero
    model, _, masks, info = load_artifact(tmp_path / "out" / "model")
    pruned, total = sum(int((~m).sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    assert pruned == round(0.3 * total)  # exact; the zeros add the embedding's [PAD] row, zero from the start
    assert info["method"] == "adapt" and 0.3 <= info["report"]["overall"]["sparsity"] == metrics["sparsity"] < 0.302
    for t in resolve_targets(model):
        w = model.get_parameter(t.param_name).detach()
        assert torch.equal(w, pretrained[t.name] * masks[t.name])  # pretrained weights, only masked

    # A finished learning rate is never redone.
    stamp = (tmp_path / "out" / "lr-0.003" / "result.json").stat().st_mtime_ns
    adapt(cfg, resume=True)
    assert (tmp_path / "out" / "lr-0.003" / "result.json").stat().st_mtime_ns == stamp


def test_adapt_cli_and_its_errors(tmp_path, glue_dir, capsys):  # noqa: F811
    model_dir = save_tiny(tmp_path / "tiny", head="base")
    out = tmp_path / "out"
    code = main(["adapt", str(model_dir), "--task", "sst2", "--data-dir", str(glue_dir), "--sparsity", "0.2", "--exact",
                 "--epochs", "1", "--batch-size", "8", "--out", str(out)])
    assert code == 0 and "sparsity 20." in capsys.readouterr().out  # 20% exactly, plus the [PAD] row
    assert (out / "metrics.json").is_file()
    for argv, needle in [(["--sparsity", "1.0"], "--sparsity 1.0"), (["--sparsity", "0.5", "--t-backward", "0"], "--t-backward"),
                         (["--sparsity", "0.5", "--task", "nope"], "nope")]:
        args = ["adapt", str(model_dir), "--task", "SST-2", "--data-dir", str(glue_dir), "--out", str(tmp_path / "x"), *argv]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
