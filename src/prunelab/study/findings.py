"""Compressing BERT's findings (Gordon et al. 2020), checked on a study's Table 1, and the budget it had.

``findings(data)`` takes ``results.collect``'s data and returns one ``Finding`` per claim of the paper that the
study's regimes and sparsities can test, each with whether this table agrees and the figures it compared
(average dev score over the tasks, 0-100; MLM dev loss). A claim the study cannot test (a regime or sparsity it
did not run, a cell not finished) is left out. ``budget(data)`` says what the study's size can and cannot show.
The thresholds are stated in each claim; report.md prints both, and the slow tests check the demo against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..data.glue import get_task

LOW = 0.4  # sparsities up to this are "low" (the paper: 30-40% does not affect transfer)
MEDIUM = 0.5  # from this on, "medium and high"
WITHIN = 2.0  # points: "costs nothing" and "close" mean within this of the other figure
CLEARLY = 5.0  # points: "clearly below" means at least this far below
TIE = 0.5  # points: scores this close are a tie (two models at chance differ by a few dev examples)
PAPER_PRUNING_STEPS = 10_000  # the paper prunes over the first 10k steps of pre-training


@dataclass(frozen=True)
class Finding:
    claim: str  # the paper's claim, with the threshold it is checked at
    holds: bool
    detail: str  # the figures compared


def _scores(data: dict, regime: str) -> dict[float, float]:
    """sparsity -> average dev score of `regime`'s finished rows (sparsity 0: the dense model)."""
    return {r["sparsity"]: r["average"]["score"] for r in data["rows"] if r["regime"] == regime and r["average"]}


def _losses(data: dict, regime: str) -> dict[float, float]:
    return {r["sparsity"]: r["pretrain_loss"] for r in data["rows"] if r["regime"] == regime and r["pretrain_loss"] is not None}


def _pct(s: float) -> str:
    return f"{s:.0%}"


def findings(data: dict) -> list[Finding]:
    """The paper's claims this table can test, each checked against it."""
    out = []
    pruned = _scores(data, "pruned")
    dense = pruned.get(0.0)
    if dense is None:
        return out
    nonzero = sorted(s for s in pruned if s > 0)
    low = [s for s in nonzero if s <= LOW]
    if low:
        gaps = {s: dense - pruned[s] for s in low}
        out.append(Finding(f"Low sparsity (<= {LOW:.0%}) pruned during pre-training costs nothing: within {WITHIN:g} "
                           "points of dense", all(g <= WITHIN for g in gaps.values()),
                           "; ".join(f"{_pct(s)}: {pruned[s]:.1f} vs dense {dense:.1f}" for s in low)))
    high = [s for s in nonzero if s >= MEDIUM]
    losses = _losses(data, "pruned")
    if nonzero and all(s in losses for s in [0.0, *nonzero]):
        rising = all(losses[a] < losses[b] for a, b in zip([0.0, *nonzero], nonzero))
        out.append(Finding("Pre-training loss rises with every step of sparsity", rising,
                           ", ".join(f"{_pct(s)}: {losses[s]:.2f}" for s in [0.0, *nonzero])))
    if high:
        top = max(high)
        falls = all(pruned[s] < dense for s in high) and dense - pruned[top] >= CLEARLY
        out.append(Finding(f"Medium and high sparsity cost transfer: below dense, at {_pct(top)} by at least {CLEARLY:g} "
                           "points", falls, "; ".join(f"{_pct(s)}: {pruned[s]:.1f}" for s in high) + f" vs dense {dense:.1f}"))
    deletion = _scores(data, "information_deletion")
    both = [s for s in high if s in deletion]
    if both:
        mean_gain = sum(deletion[s] - pruned[s] for s in both) / len(both)
        out.append(Finding("Information deletion recovers part of what pruning loses at medium and high sparsity: "
                           f"it scores higher than pruning there on average, and at {_pct(max(both))}",
                           mean_gain > 0 and deletion[max(both)] > pruned[max(both)],
                           "; ".join(f"{_pct(s)}: {deletion[s]:.1f} vs {pruned[s]:.1f}" for s in both)
                           + f" (mean difference {mean_gain:+.1f})"))
    random = _scores(data, "random")
    others = {r: _scores(data, r) for r in ("pruned", "information_deletion", "pruned_after_finetuning") if r in data["regimes"]}
    compared = [s for s in nonzero if s in random and all(s in o for o in others.values())]
    if compared:
        worst = all(random[s] <= min(o[s] for o in others.values()) + TIE for s in compared)
        out.append(Finding(f"Random pruning is worst at every sparsity: no other regime scores lower (within {TIE:g} "
                           "points is a tie, as when both are at chance)", worst,
                           "; ".join(f"{_pct(s)}: {random[s]:.1f} vs lowest other {min(o[s] for o in others.values()):.1f}"
                                     for s in compared)))
    after = _scores(data, "pruned_after_finetuning")
    paired = [s for s in nonzero if s in after]
    if paired:
        mean_gap = sum(after[s] - pruned[s] for s in paired) / len(paired)
        out.append(Finding(f"Fine-tuning does not make the model more prunable: pruned after fine-tuning scores on average "
                           f"no more than {WITHIN:g} points above pruned during pre-training", mean_gap <= WITHIN,
                           "; ".join(f"{_pct(s)}: {after[s]:.1f} vs {pruned[s]:.1f}" for s in paired)
                           + f" (mean difference {mean_gap:+.1f})"))
    return out


def budget(data: dict) -> list[str]:
    """What the study's size can and cannot show, as report lines."""
    spec = data["spec"]
    p, f = spec.pretrain, spec.finetune
    examples = f"{f.max_train_samples} examples" if f.max_train_samples else "the whole training set"
    noise = []
    for name in data["tasks"]:
        task, dense = get_task(name), next((r["cells"][name] for r in data["rows"] if r["sparsity"] == 0 and r["cells"][name]), None)
        n = data.get("dev_examples", {}).get(name)
        if task.metrics == ("accuracy",) and dense and n:
            acc = dense["score"] / 100
            noise.append(f"{name.upper()}: {100 * math.sqrt(acc * (1 - acc) / n):.1f} points ({n} dev examples)")
    short = p.steps < PAPER_PRUNING_STEPS
    lines = [
        f"- Pre-training: {p.steps} MLM steps of {p.batch_size} x {p.max_seq_len} tokens"
        + (f", after {p.head_warmup_steps} steps warming up a fresh MLM head" if p.head_warmup_steps else "")
        + (f". The paper prunes over its first {PAPER_PRUNING_STEPS:,} steps; this many are too few to recover from "
           "pruning, so the pruned rows show mostly which weights pruning removed, and the pre-train loss is the MLM "
           "dev loss right after." if short else "."),
        f"- Fine-tuning: {examples} per task, {f.epochs:g} epoch{'s' * (f.epochs != 1)} at lr {', '.join(f'{lr:g}' for lr in f.lrs)}, "
        f"{len(f.seeds)} seed{'s' * (len(f.seeds) != 1)}, scored on the full dev set.",
    ]
    if noise:
        lines.append("- Noise: the standard error of a dev accuracy alone is " + "; ".join(noise) + ", and with "
                     f"{len(f.seeds)} seed{'s' * (len(f.seeds) != 1)} per cell the seed adds about as much: differences of a few points between two "
                     "cells are within noise.")
    lines += [
        "- It can show: how the MLM loss and the dev score move with sparsity, and orderings between regimes larger "
        "than the noise.",
        "- It cannot show: differences smaller than that; the paper's absolute scores (BERT-base, full GLUE training "
        "sets, long pre-training); how much longer pre-training recovers"
        + ("; which tasks need more pre-training knowledge than others (one task)" if len(data["tasks"]) == 1 else "") + ".",
    ]
    return lines
