"""Wanda (Sun, Liu, Bair, Kolter 2023): prune by |W_ij| · ||X_j||_2 over calibration inputs, no weight update.

One pass layer by layer (``layerwise``): each linear target's input feature norms ||X_j||_2 are gathered over the
calibration tokens (padding excluded) as the already-pruned earlier layers produce them, then its weights are
scored (``scores.wanda``) and pruned within each output row (the paper's comparison group, scope ``row``), over the
whole matrix (``matrix``), or N:M along the input dimension. Exact counts as every prunelab mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ..select import compute_masks, nm_masks
from ..targets import Target
from .layerwise import prune_layerwise


def input_norms(sums_of_squares: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """||X_j||_2 per input feature from the gathered sums of squares."""
    return {name: s.sqrt() for name, s in sums_of_squares.items()}


@torch.no_grad()
def wanda_masks(model: nn.Module, batches: list[dict], targets: list[Target], sparsity: float, *, scope: str = "row",
                structure: str | None = None, progress=None) -> dict[str, torch.Tensor]:
    """Prune `model`'s linear targets inside its encoder layers by Wanda in place, layer by layer; return their
    keep masks (target name -> bool, the weight's shape). Other targets are left to the caller.

    Args:
        batches: Calibration inputs (with ``attention_mask``).
        sparsity: Fraction of zeros of each target (``structure`` ``N:M`` gives 1 - N/M).
        scope: ``row`` (per output row: the paper) or ``matrix``.
    """
    masks: dict[str, torch.Tensor] = {}

    def prune_layer(index: int, modules: dict[str, nn.Linear], feed) -> None:
        sums = {name: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for name, m in modules.items()}

        def gather(name: str, rows: torch.Tensor) -> None:
            sums[name] += (rows * rows).sum(0)

        feed(gather)
        weights = {name: m.weight.detach() for name, m in modules.items()}
        norms = input_norms(sums)
        if structure:
            layer_masks = nm_masks(weights, structure, criterion="wanda", stats=norms)
        else:
            layer_masks = compute_masks(weights, sparsity, criterion="wanda", scope=scope, stats=norms)
        for name, m in modules.items():
            m.weight.mul_(layer_masks[name].to(m.weight.dtype)).add_(0.0)
        masks.update(layer_masks)

    prune_layerwise(model, batches, targets, prune_layer, progress=progress)
    return masks
