"""Pruning criteria: one function per criterion that scores each weight; the lowest scores are pruned.

A criterion is ``fn(weight, *, name, seed) -> scores`` returning a *new* float32 tensor of the weight's
shape (the selector may overwrite it in place). Adding a criterion (movement, Wanda, learned scores) is
one function plus one line in ``CRITERIA``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from .errors import InputError

Criterion = Callable[..., torch.Tensor]


def magnitude(weight: torch.Tensor, *, name: str = "", seed: int = 0) -> torch.Tensor:
    """|w| in float32, shape of `weight` (Han et al. 2015; the Compressing BERT criterion)."""
    return weight.detach().abs().to(torch.float32)


def random(weight: torch.Tensor, *, name: str = "", seed: int = 0) -> torch.Tensor:
    """Uniform scores from a generator seeded by (`seed`, `name`).

    The same seed gives the same scores for a target on every call, so random masks at increasing
    sparsity are nested and a run is reproducible independently of target order.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32)


CRITERIA: dict[str, Criterion] = {"magnitude": magnitude, "random": random}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise InputError(f"unknown criterion {name!r}; allowed: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]
