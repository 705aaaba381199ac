"""Movement pruning's scores (Sanh, Wolf, Rush 2020), as the ``Pruner`` keeps them while a model trains.

S = -Σ_t W_t ⊙ ∂L/∂W_t per target, accumulated by a tensor hook at every backward pass: it sees each backward's own
gradient, so gradient accumulation over micro-batches adds up, as the optimizer's step does. The masks are the
top-k of S at every update: the straight-through top-k estimator, learned by SGD. There g is the gradient of the
loss with respect to the masked weight, dense also where pruned, and a pruned weight keeps the value it had when
pruned (``latent``), so its score goes on learning and it comes back with that value if its score rises again.
"""

from __future__ import annotations

import torch
from torch import nn


class MovementScores:
    """Target name -> S (``scores``) and the values of its pruned weights (``latent``, 0 where kept)."""

    def __init__(self):
        self.scores: dict[str, torch.Tensor] = {}
        self.latent: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def tracking(self) -> bool:
        return bool(self._hooks)

    def track(self, params: dict[str, nn.Parameter]) -> None:
        """Accumulate S -= W ⊙ g for every parameter at every backward pass (W: the value set aside where pruned)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for name, param in params.items():
            score = self.scores.get(name)
            if score is None or score.shape != param.shape or score.device != param.device:
                self.scores[name] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)

            def accumulate(grad: torch.Tensor, name: str = name, param: nn.Parameter = param) -> None:
                weight = param.detach().float()
                latent = self.latent.get(name)
                if latent is not None:
                    weight = weight + latent
                self.scores[name].sub_(weight * grad.float())

            self._hooks.append(param.register_hook(accumulate))

    @torch.no_grad()
    def set_aside(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor],
                  previous: dict[str, torch.Tensor]) -> None:
        """Before `masks` replace `previous` (none: all kept): a weight they prune keeps its value aside, a weight
        they bring back gets its value back."""
        for name, keep in masks.items():
            param = params[name]
            latent = self.latent.get(name)
            if latent is None or latent.shape != param.shape or latent.device != param.device:
                latent = self.latent[name] = torch.zeros_like(param, dtype=torch.float32)
            was_kept = previous[name].to(param.device) if name in previous else torch.ones_like(keep)
            back, going = keep & ~was_kept, was_kept & ~keep
            param[back] = latent[back].to(param.dtype)
            latent[back] = 0.0
            latent[going] = param[going].float()

    def reduced(self) -> dict[str, torch.Tensor]:
        """The scores, averaged over the ranks of a data-parallel launch, so that every rank chooses the same masks."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for score in self.scores.values():
                dist.all_reduce(score)  # each rank saw its own batches
                score.div_(dist.get_world_size())
        return self.scores

    def load(self, scores: dict[str, torch.Tensor], latent: dict[str, torch.Tensor]) -> None:
        """Copy saved scores and values into those of the same targets."""
        for mine, saved in ((self.scores, scores), (self.latent, latent)):
            for name, value in saved.items():
                if name in mine:
                    mine[name].copy_(value)
