"""Pruning criteria: one function per criterion that scores each weight; the lowest scores are pruned.

A criterion is ``fn(weight, *, name, seed, stat) -> scores`` returning a *new* float32 tensor of the weight's
shape (the selector may overwrite it in place). `stat` is what a criterion needs beyond the weight, gathered
elsewhere: movement's scores accumulated during training (``pruner``), Wanda's input-feature norms over
calibration data (``methods.wanda``). Adding a criterion is one function plus one line in ``CRITERIA``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from .errors import InputError

Criterion = Callable[..., torch.Tensor]


def magnitude(weight: torch.Tensor, *, name: str = "", seed: int = 0, stat: torch.Tensor | None = None) -> torch.Tensor:
    """|w| in float32, shape of `weight` (Han et al. 2015; the Compressing BERT criterion)."""
    return weight.detach().abs().to(torch.float32)


def random(weight: torch.Tensor, *, name: str = "", seed: int = 0, stat: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform scores from a generator seeded by (`seed`, `name`).

    The same seed gives the same scores for a target on every call, so random masks at increasing
    sparsity are nested and a run is reproducible independently of target order.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32)


def movement(weight: torch.Tensor, *, name: str = "", seed: int = 0, stat: torch.Tensor | None = None) -> torch.Tensor:
    """Movement (Sanh, Wolf, Rush 2020): S = -Σ_t W_t ⊙ ∂L/∂W_t, accumulated over training steps (`stat`, of the
    weight's shape): high where the weight moves away from zero, low where training pulls it towards zero."""
    if stat is None:
        raise InputError(f"movement scores of {name!r} are missing: movement prunes during training, where the "
                         "pruner accumulates them (fine-tune, distill-prune or pretrain with --criterion movement)")
    return stat.detach().to(torch.float32).clone()


def wanda(weight: torch.Tensor, *, name: str = "", seed: int = 0, stat: torch.Tensor | None = None,
          input_axis: int = -1) -> torch.Tensor:
    """Wanda (Sun, Liu, Bair, Kolter 2023): |W_ij| · ||X_j||_2, the weight's magnitude times the L2 norm of its
    input feature j over calibration tokens (`stat`: one norm per input feature, along `input_axis`)."""
    if stat is None:
        raise InputError(f"Wanda needs the input norms of {name!r} from calibration data (--calibration)")
    axis = input_axis % weight.dim()
    shape = [1] * weight.dim()
    shape[axis] = -1
    return weight.detach().abs().to(torch.float32) * stat.to(device=weight.device, dtype=torch.float32).view(shape)


CRITERIA: dict[str, Criterion] = {"magnitude": magnitude, "random": random, "movement": movement, "wanda": wanda}
# Criteria whose `stat` comes from training (the pruner); those calibrated one-shot are ``config.CALIBRATED``.
DURING_TRAINING = ("movement",)


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise InputError(f"unknown criterion {name!r}; allowed: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]
