"""Adapting by pruning (Gao, Colombo, Wang 2021): learn a binary mask over frozen pretrained weights.

Each target weight W (frozen) gets a score tensor θ of its shape, and the forward pass sees W ⊙ m with

    m = 1[θ > 0]                 t_forward = None or inf (default): exactly the mask that is finally kept
    m = sigmoid(t_forward · θ)   a finite, large t_forward

while the backward pass differentiates m as if it were sigmoid(t_backward · θ) with a small t_backward
(straight-through): ∂m/∂θ = t_b · σ(t_b θ) · (1 − σ(t_b θ)). Scores start near zero and positive,
θ ~ N(0.01, 0.001) as in the paper, so training starts from the dense pretrained model.

Sparsity is pushed by a penalty λ · Σθ added to the training loss (the paper's −λΣθ term in the objective it
maximises). It is on only while the realized sparsity (the fraction of θ ≤ 0) is below the target of the
current step, and reversed (−λ · Σθ, pulling scores back up) while it is more than `band` above it: the
target-sparsity control. Adam moves every score by about the learning rate per step whatever λ is, so a
one-sided penalty overshoots the target; the reversed one lets the pruned scores nearest zero return. The
target ramps from 0 to the final sparsity over `ramp_steps` with the cubic schedule
(``schedules.sparsity_at``). The final mask is θ > 0 (the paper), or with ``exact=True`` the round(s · N)
lowest scores over all targets are pruned.

A weight that another module shares (an MLM decoder tied to the word embeddings) is masked there too, by the same
scores, so every use of it sees W ⊙ m.

The masks act through ``torch.nn.utils.parametrize`` while training only, because a mask that is a function of
a trained parameter has to sit in the autograd graph. ``MaskLearner.finish`` removes the parametrizations and
multiplies the frozen weights by the final masks in place, so the model keeps its usual state-dict keys and a
saved model loads with plain ``transformers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..schedules import sparsity_at
from ..select import compute_masks
from ..targets import Target, resolve_targets
from ..errors import InputError


def straight_through_mask(scores: torch.Tensor, t_forward: float | None, t_backward: float) -> torch.Tensor:
    """The mask of `scores` (any shape, float): forward value of t_forward, gradient of sigmoid(t_backward · θ).

    Returns a new tensor of the scores' shape; with ``t_forward`` None or inf its values are exactly 0.0 and 1.0.
    """
    soft = torch.sigmoid(t_backward * scores)
    hard = (scores > 0).to(scores.dtype) if t_forward is None or math.isinf(t_forward) else torch.sigmoid(t_forward * scores)
    return hard + (soft - soft.detach())  # the value of `hard`, the gradient of `soft`


class ScoreMask(nn.Module):
    """A parametrization W -> W ⊙ m(θ) holding the scores θ of one weight."""

    def __init__(self, scores: torch.Tensor, t_forward: float | None, t_backward: float):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.t_forward, self.t_backward = t_forward, t_backward

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * straight_through_mask(self.scores, self.t_forward, self.t_backward).to(weight.dtype)


REGULARIZERS = ("scores", "sigmoid")


class MaskLearner:
    """Learns binary masks over the target weights of `model` (frozen, or trained too: soft movement pruning);
    usable in any training loop.

    In a loop: add ``learner.penalty()`` to the loss, step the optimizer (over ``learner.parameters()`` and
    whatever else trains), then call ``learner.update(step)``; at the end ``masks = learner.finish()``.

    Args:
        model: A ``transformers`` model of a supported ``model_type``; its target weights are frozen here unless
            `train_weights`.
        sparsity: Final fraction of zeros over all targets, in [0, 1).
        penalty: λ of the sparsity penalty λ · Σθ.
        t_forward, t_backward: The sigmoid temperatures of the forward and backward pass; ``t_forward=None``
            is the hard step 1[θ > 0].
        ramp_steps: Optimizer steps over which the target sparsity ramps (cubic) from 0 to `sparsity`;
            0 targets the final sparsity from the first step.
        ramp_start: The step the ramp starts at (the target is 0 before it).
        band: How far above the target the realized sparsity may go before the penalty reverses.
        init_mean, init_std: The scores' normal initialisation.
        include, exclude, layers: Which targets get masks (see ``targets.resolve_targets``).
        seed: Seed of the scores' initialisation.
        train_weights: Train the weights under their masks too (soft movement pruning, Sanh et al. 2020): their
            gradient reaches them through the mask, and the scores learn from W ⊙ ∂L/∂(W ⊙ m), the movement.
        regularizer: ``scores`` (λ · Σθ, adapting by pruning) or ``sigmoid`` (λ · Σσ(θ), soft movement's).
    """

    def __init__(self, model: nn.Module, sparsity: float, *, penalty: float = 1e-8, t_forward: float | None = None,
                 t_backward: float = 1.0, ramp_steps: int = 0, ramp_start: int = 0, band: float = 0.01,
                 init_mean: float = 0.01, init_std: float = 0.001, include=None, exclude=None, layers=None, seed: int = 0,
                 train_weights: bool = False, regularizer: str = "scores"):
        if not 0.0 <= sparsity < 1.0:
            raise InputError(f"sparsity {sparsity} is outside [0, 1); pass the fraction of zeros, e.g. 0.5")
        if regularizer not in REGULARIZERS:
            raise InputError(f"unknown regularizer {regularizer!r}; allowed: {', '.join(REGULARIZERS)}")
        if min(penalty, band, ramp_steps, ramp_start) < 0 or t_backward <= 0 or (t_forward is not None and t_forward <= 0):
            raise InputError(f"penalty ({penalty}), band ({band}), ramp_steps ({ramp_steps}) and ramp_start ({ramp_start}) "
                             f"must be >= 0, the temperatures t_forward ({t_forward}) and t_backward ({t_backward}) > 0")
        self.model, self.sparsity, self.penalty_weight, self.band = model, sparsity, penalty, band
        self.ramp_start, self.ramp_steps, self.regularizer = ramp_start, ramp_steps, regularizer
        self.selection = {"include": include, "exclude": exclude, "layers": layers}
        self.targets: list[Target] = resolve_targets(model, include, exclude, layers)
        self.direction, self.target_sparsity = 1, sparsity if ramp_steps == 0 else 0.0
        self._masks: dict[str, ScoreMask] = {}
        # every (module, attribute) that holds each target's weight: its owner first, then the modules tied to it
        self._holders = {t.name: self._holders_of(t) for t in self.targets}  # before any parametrization moves a weight
        generator = torch.Generator().manual_seed(seed)
        for t in self.targets:
            module, attr = self._holders[t.name][0]
            weight = getattr(module, attr)
            weight.requires_grad_(train_weights)
            scores = torch.empty(weight.shape, dtype=torch.float32).normal_(init_mean, init_std, generator=generator)
            self._masks[t.name] = ScoreMask(scores.to(weight.device), t_forward, t_backward)
            for holder, name in self._holders[t.name]:
                parametrize.register_parametrization(holder, name, self._masks[t.name])
        self.update(0)

    def _owner(self, target: Target) -> tuple[nn.Module, str]:
        module_name, _, attr = target.param_name.rpartition(".")
        return self.model.get_submodule(module_name), attr

    def _holders_of(self, target: Target) -> list[tuple[nn.Module, str]]:
        """The target's owner, then every other module attribute holding the same parameter (tied weights)."""
        owner, attr = self._owner(target)
        weight = getattr(owner, attr)
        tied = [(m, name) for m in self.model.modules() for name, p in m._parameters.items()
                if p is weight and not (m is owner and name == attr)]
        return [(owner, attr), *tied]

    def scores(self) -> dict[str, nn.Parameter]:
        """Target name -> its score tensor θ (trained, float32, the weight's shape)."""
        return {name: mask.scores for name, mask in self._masks.items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.scores().values())

    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """Target name -> the frozen pretrained weight under its mask (not a copy); only before ``finish``."""
        owners = {t.name: self._owner(t) for t in self.targets}
        return {name: module.parametrizations[attr].original for name, (module, attr) in owners.items()}

    @torch.no_grad()
    def realized_sparsity(self) -> float:
        """Fraction of scores ≤ 0 over all targets: the sparsity of the mask θ > 0."""
        scores = list(self.parameters())
        return sum(int((s <= 0).sum()) for s in scores) / sum(s.numel() for s in scores)

    def penalty(self) -> torch.Tensor:
        """±λ · Σθ (``scores``) or ±λ · Σσ(θ) (``sigmoid``: soft movement's), or 0 inside the band (a scalar tensor;
        see the module docstring)."""
        scores = list(self.parameters())
        if self.direction == 0 or self.penalty_weight == 0:
            return scores[0].new_zeros(())
        term = (lambda s: s.sum()) if self.regularizer == "scores" else (lambda s: torch.sigmoid(s).sum())
        return (self.direction * self.penalty_weight) * sum(term(s) for s in scores)

    def update(self, step: int) -> dict[str, float]:
        """After optimizer step `step`: the target of this step, and the penalty's direction for the next."""
        self.target_sparsity = sparsity_at(step, schedule="cubic", final_sparsity=self.sparsity, start_step=self.ramp_start,
                                           end_step=self.ramp_start + self.ramp_steps) if self.ramp_steps else self.sparsity
        realized = self.realized_sparsity()
        self.direction = 1 if realized < self.target_sparsity else -1 if realized > self.target_sparsity + self.band else 0
        return self.metrics(realized)

    def metrics(self, realized: float | None = None) -> dict[str, float]:
        return {"adapt/sparsity": self.realized_sparsity() if realized is None else realized,
                "adapt/target_sparsity": self.target_sparsity, "adapt/penalty_direction": float(self.direction)}

    @torch.no_grad()
    def masks(self, exact: bool = False) -> dict[str, torch.Tensor]:
        """Target name -> bool keep mask: θ > 0, or with `exact` the round(s · N) lowest θ pruned over all targets."""
        scores = self.scores()
        if not exact:
            return {name: s > 0 for name, s in scores.items()}
        low = min(float(s.min()) for s in scores.values())
        # Shifted to be >= 0, magnitude orders the scores themselves; the radix select is exact and tie-stable.
        return compute_masks({n: s.detach() - low for n, s in scores.items()}, self.sparsity, scope="global")

    @torch.no_grad()
    def finish(self, exact: bool = False) -> dict[str, torch.Tensor]:
        """Remove the parametrizations (tied weights stay tied), zero the pruned weights in place, stop the scores'
        training, and return the final keep masks."""
        masks = self.masks(exact)
        for t in self.targets:
            for holder, name in self._holders[t.name]:  # each gets the very parameter back
                parametrize.remove_parametrizations(holder, name, leave_parametrized=False)
            module, attr = self._holders[t.name][0]
            getattr(module, attr).mul_(masks[t.name].to(getattr(module, attr).dtype)).add_(0.0)  # pruned: +0.0, not -0.0
        for scores in self.parameters():  # no longer in the model: an optimizer that holds them skips them from now on
            scores.grad = None
            scores.requires_grad_(False)
        return masks
