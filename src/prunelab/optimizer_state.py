"""An optimizer's per-weight state at pruned positions: plain functions the ``Pruner`` calls.

SGD, Adam and AdamW update each weight from its own gradient and state only. Where a weight, its gradient
and its first-order state (momentum, Adam's ``exp_avg``) are all 0, their update is exactly 0, weight decay
included: so once the gradient hooks zero pruned gradients and this state is cleared at pruned positions,
the optimizer itself keeps pruned weights at 0.0, and no per-step pass over the weights is needed.

Adam's second moments (``exp_avg_sq``, ``max_exp_avg_sq``) are set to 1.0 there, not 0.0. The update
``exp_avg / (sqrt(exp_avg_sq) + eps)`` is 0 either way, but x86 CPUs take about 10x longer for the square
root of 0, or of a denormal, than of a normal number. At 0, AdamW steps on a 50%-pruned model were 1.8x
slower. The decay by beta2 each step is undone by a refill before the value could fall below 1e-3.
"""

from __future__ import annotations

import math
import weakref

import torch

# Exact types only: a subclass may override ``step``. Other optimizers (Shampoo, Muon, ...) mix entries.
ZERO_PRESERVING_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
SECOND_MOMENT_FILL = 1.0
_FLOOR = 1e-3  # refill before FILL * beta2**k could drop below this (a normal number even in fp16)
_MAX_REFILL_INTERVAL = 10_000


def holds_zeros(optimizer) -> bool:
    """Whether `optimizer`'s own update keeps a zero weight at zero given zero gradient and cleared state."""
    return type(optimizer) in ZERO_PRESERVING_OPTIMIZERS


def state_tensors(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-weight state of `param` (tensors of its shape; step counters and scalars left out)."""
    return {key: value for key, value in optimizer.state.get(param, {}).items()
            if isinstance(value, torch.Tensor) and value.shape == param.shape}


@torch.no_grad()
def tidy(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor, *,
         previous_keep: torch.Tensor | None = None, fill: float = SECOND_MOMENT_FILL) -> list[weakref.ref]:
    """At pruned positions (``~keep``), zero `param`'s state and set its second moments to `fill`.

    Positions pruned under `previous_keep` but kept under `keep` (regrowth) restart with zero second moments.
    Returns weak references to the state tensors, so a caller can tell when the optimizer replaced them.
    """
    tensors = state_tensors(optimizer, param)
    for key, value in tensors.items():
        mask = keep.to(value.device)
        if key in SECOND_MOMENTS:
            if previous_keep is not None:
                value.masked_fill_(mask & ~previous_keep.to(value.device), 0.0)
            value.masked_fill_(~mask, fill)
        else:
            value.mul_(mask.to(value.dtype))
    return [weakref.ref(value) for value in tensors.values()]


def is_tidy(optimizer: torch.optim.Optimizer, param: torch.Tensor, refs: list[weakref.ref] | None) -> bool:
    """False when `param`'s state tensors are not those `tidy` returned `refs` to: created since (an
    optimizer's first step) or replaced (``load_state_dict``). True when there is no state yet."""
    tensors = list(state_tensors(optimizer, param).values())
    if not tensors:
        return True
    return refs is not None and len(refs) == len(tensors) and all(r() is t for r, t in zip(refs, tensors))


def refill_interval(optimizer: torch.optim.Optimizer) -> int:
    """Steps after which beta2 decay could bring a filled second moment below the floor (at least 1)."""
    interval = _MAX_REFILL_INTERVAL
    for group in optimizer.param_groups:
        betas = group.get("betas")
        if betas is not None and 0.0 < float(betas[1]) < 1.0:
            steps = math.log(_FLOOR / SECOND_MOMENT_FILL) / math.log(float(betas[1]))
            interval = min(interval, max(1, int(steps)))
    return interval
