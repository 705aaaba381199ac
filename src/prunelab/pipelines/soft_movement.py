"""Soft movement pruning (Sanh, Wolf and Rush 2020) as pretrain, finetune and distill-prune run it: its options and
their checks, the learner and optimizer of a run, and the exact masks it ends with.

The story, in every pipeline:
    1. every target gets scores S (``methods.learned_masks.MaskLearner`` with ``train_weights``), starting at
       ``initial_score``: the forward pass sees W ⊙ 1[S > 0], and the weights train under their masks;
    2. the regulariser ±λ·Σσ(S) joins the training loss (``MaskLearnerLoss``), switched by the target-sparsity
       control: on while the sparsity of S > 0 is below the target (cubic from 0 over the ramp), reversed once it
       is more than `band` above it; the scores have their own learning rate;
    3. at step `fix_at` the round(s·N) lowest scores over all targets go, so the sparsity is exact, and a ``Pruner``
       holds those masks for the steps left (``MaskLearnerCallback``); the run reports the sparsity S > 0 had
       reached then (``sparsity_at_end_of_training``).

A soft-movement run keeps no mid-run checkpoints: while it learns, the masks are parametrizations of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_number
from ..integrations.hf_trainer import MaskLearnerCallback
from ..methods.learned_masks import MaskLearner
from ..pruner import Pruner
from ..errors import InputError

SOFT_MOVEMENT = "soft-movement"


@dataclass(kw_only=True)
class SoftMovementOptions:
    """The options of ``--criterion soft-movement``, the same in every pipeline that takes it.

    Attributes:
        scores_lr: The scores' learning rate (Sanh et al.'s ``mask_scores_learning_rate``).
        penalty: λ of the regulariser ±λ·Σσ(S), switched by the target-sparsity control.
        band: Realized sparsity this far above the target reverses the penalty.
    """

    scores_lr: float = 1e-2
    penalty: float = 1e-4
    band: float = 0.01

    def check_soft_movement(self, criterion: str, sparsity, scope: str, structure: str | None = None) -> None:
        """Check the options, and with soft movement the settings it cannot run with; call from ``__post_init__``."""
        check_number("--scores-lr", self.scores_lr, low=0, low_open=True)
        check_number("--penalty", self.penalty, low=0)
        check_number("--band", self.band, low=0)
        if criterion != SOFT_MOVEMENT:
            return
        check_number("--sparsity", sparsity, low=0, high=1, high_open=True)
        if scope != "matrix":
            raise InputError(f"soft-movement learns one threshold-free mask over all targets; --scope {scope} "
                             "does not apply: drop it")
        if structure is not None:
            raise InputError(f"--structure {structure} does not apply to soft-movement (its masks are learned weight "
                             "by weight, not in groups of M); drop --structure, or use --criterion magnitude")


def initial_score(scores_lr: float, ramp_steps: int) -> float:
    """Where the scores start: a quarter of the way an Adam-trained score can travel over the ramp (about
    `scores_lr` a step), so that a weight goes only once training has pushed its score down for that long, not on the
    noise of a few steps; at least 0.01 (adapt's start).

    With the threshold at 0 this is the margin Sanh et al. get from starting the scores at 0 and raising the threshold
    on σ(S). Measured on MiniLM pruned to 90% while fine-tuning on SST-2 (190 steps, a ramp of 133): starting at 0.01
    the masks flip on noise and the run ends at chance; at 0.33 (this rule) and 0.5 it beats magnitude; at 1.0 the
    scores had not reached the target when the masks were fixed."""
    return max(0.01, 0.4 * scores_lr * ramp_steps)


def start(model: torch.nn.Module, options: SoftMovementOptions, *, sparsity: float, lr: float, weight_decay: float,
          ramp_start: int, ramp_end: int, fix_at: int, seed: int,
          exclude: list[str] | None = None) -> tuple[MaskLearner, torch.optim.Optimizer, MaskLearnerCallback]:
    """Scores over every target of `model` but the kinds in `exclude` (its weights keep training), and their optimizer
    and callback.

    The target sparsity ramps (cubic) from 0 at `ramp_start` to `sparsity` at `ramp_end`; the masks are fixed at
    step `fix_at`. The optimizer is AdamW in two groups: the scores at ``options.scores_lr`` without weight decay,
    every other trained parameter at `lr` with `weight_decay`. Pass the learner to a ``MaskLearnerLoss`` Trainer,
    the optimizer as its ``optimizers``, and ``attach`` the callback.
    """
    learner = MaskLearner(model, sparsity, penalty=options.penalty, ramp_start=ramp_start,
                          ramp_steps=ramp_end - ramp_start, band=options.band, seed=seed, train_weights=True,
                          regularizer="sigmoid", exclude=exclude,
                          init_mean=initial_score(options.scores_lr, ramp_end - ramp_start))
    scores = {id(p) for p in learner.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in scores]
    optimizer = torch.optim.AdamW([{"params": list(learner.parameters()), "lr": options.scores_lr, "weight_decay": 0.0},
                                   {"params": rest, "lr": lr, "weight_decay": weight_decay}])
    return learner, optimizer, MaskLearnerCallback(learner, fix_at=fix_at)


def finished(callback: MaskLearnerCallback, steps: int) -> tuple[Pruner, dict]:
    """The pruner holding the fixed masks of a run that took `steps` steps, and what its result reports of them."""
    if callback.pruner is None:
        raise RuntimeError(f"training ended after {steps} steps, before step {callback.fix_at} where the soft-movement "
                           "masks are fixed")
    return callback.pruner, {"target_sparsity": callback.learner.sparsity,
                             "sparsity_at_end_of_training": callback.reached}
