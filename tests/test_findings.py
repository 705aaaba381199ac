"""The paper's findings checked on a Table 1, and the budget statement, on constructed tables."""

import pytest

from prunelab.study.findings import budget, findings
from prunelab.study.spec import FinetuneSpec, PretrainSpec, StudySpec

REGIMES = ["pruned", "information_deletion", "pruned_after_finetuning", "random"]


def table(scores: dict, losses: dict, tasks=("sst2",), dev_examples=None):
    """scores: regime -> {sparsity: score}; losses: regime -> {sparsity: pre-train loss}."""
    spec = StudySpec(name="t", model="m", sparsities=[0.0, 0.3, 0.6, 0.9], regimes=REGIMES,
                     pretrain=PretrainSpec(steps=20, head_warmup_steps=10),
                     finetune=FinetuneSpec(tasks=["SST-2"], lrs=[1e-4], max_train_samples=1600))
    rows = []
    for regime in REGIMES:
        for s in spec.sparsities:
            score = scores[regime].get(s, scores["pruned"][0.0] if s == 0 else None)
            cell = None if score is None else {"score": score, "train_loss": 0.3, "lr": 1e-4}
            rows.append({"regime": regime, "sparsity": s, "pretrain_loss": losses[regime].get(s, losses["pruned"][0.0]),
                         "cells": {t: cell for t in tasks}, "average": cell})
    return {"spec": spec, "tasks": list(tasks), "regimes": REGIMES, "rows": rows, "dev_examples": dev_examples or {}}


STORY = {"pruned": {0.0: 80.0, 0.3: 79.0, 0.6: 74.0, 0.9: 60.0},
         "information_deletion": {0.3: 79.5, 0.6: 76.0, 0.9: 66.0},
         "pruned_after_finetuning": {0.3: 79.2, 0.6: 75.0, 0.9: 61.0},
         "random": {0.3: 70.0, 0.6: 55.0, 0.9: 50.0}}
LOSSES = {"pruned": {0.0: 3.0, 0.3: 3.1, 0.6: 3.6, 0.9: 5.0}, "information_deletion": {0.3: 3.1, 0.6: 3.6, 0.9: 5.0},
          "pruned_after_finetuning": {}, "random": {0.3: 4.0, 0.6: 6.0, 0.9: 7.0}}


def test_every_claim_holds_on_the_papers_story():
    checked = findings(table(STORY, LOSSES))
    assert len(checked) == 6 and all(f.holds for f in checked), [f for f in checked if not f.holds]


@pytest.mark.parametrize("changes, claim", [
    ([("pruned", 0.3, 77.5)], "Low sparsity"),  # 2.5 points below dense
    ([("pruned", 0.9, 76.0), ("information_deletion", 0.9, 77.0), ("pruned_after_finetuning", 0.9, 76.0)],
     "Medium and high sparsity cost transfer"),  # 4 points below dense: not clearly
    ([("information_deletion", 0.9, 59.0)], "Information deletion"),  # below pruning at 90%
    ([("random", 0.6, 75.0)], "Random pruning is worst"),  # above pruning
    ([("pruned_after_finetuning", 0.6, 85.0)], "Fine-tuning does not make"),  # far above pruned
])
def test_each_claim_fails_when_its_ordering_breaks(changes, claim):
    broken = {r: dict(v) for r, v in STORY.items()}
    for regime, sparsity, score in changes:
        broken[regime][sparsity] = score
    failed = [f.claim for f in findings(table(broken, LOSSES)) if not f.holds]
    assert len(failed) == 1 and failed[0].startswith(claim), failed


def test_a_falling_pretrain_loss_fails_and_missing_regimes_are_not_claimed():
    losses = {**LOSSES, "pruned": {0.0: 3.0, 0.3: 3.1, 0.6: 3.0, 0.9: 5.0}}
    assert [f.claim for f in findings(table(STORY, losses)) if not f.holds] == ["Pre-training loss rises with every step of sparsity"]
    data = table(STORY, LOSSES)
    data["rows"] = [r for r in data["rows"] if r["regime"] == "pruned"]
    assert [f.claim.split(" ")[0] for f in findings(data)] == ["Low", "Pre-training", "Medium"]


def test_budget_states_the_size_and_the_noise_of_a_dev_accuracy():
    lines = "\n".join(budget(table(STORY, LOSSES, dev_examples={"sst2": 872})))
    assert "20 MLM steps of 32 x 128 tokens, after 10 steps warming up a fresh MLM head" in lines
    assert "too few to recover" in lines and "1600 examples per task, 3 epochs at lr 0.0001, 1 seed" in lines
    assert "SST2: 1.4 points (872 dev examples)" in lines  # sqrt(0.8 * 0.2 / 872)
    assert "which tasks need more pre-training knowledge" in lines  # one task


def test_ties_at_chance_and_a_noisy_medium_point_still_hold():
    story = {r: dict(v) for r, v in STORY.items()}
    story["pruned"][0.9] = story["random"][0.9] = 50.9
    story["random"][0.9], story["pruned_after_finetuning"][0.9] = 51.0, 52.0  # chance level, one dev example apart
    story["information_deletion"][0.6] = 73.5  # half a point below pruning at 60%, far above at 90%
    assert all(f.holds for f in findings(table(story, LOSSES)))
