"""SparseGPT (Frantar, Alistarh 2023): one-shot pruning with reconstruction, layer by layer over calibration data.

For a linear layer with weight W (rows × cols) and inputs X (tokens × cols), it keeps ||WX^T − ŴX^T|| small
for the pruned Ŵ: with the Hessian H = 2 X^T X (dampened by `percdamp` · mean(diag H) on its diagonal), it sweeps
the columns in order, in blocks of `blocksize`. In each block it chooses the mask by w² / [H⁻¹]_jj² (the OBS
saliency), exactly as many weights per block as keep the matrix's count exact (``block_counts``; N:M instead
chooses N of each group of M as the sweep reaches it), and for each column zeroes the pruned weights and moves
their error onto the columns not yet swept, w ← w − (w_j − ŵ_j)/[H⁻¹]_jj · H⁻¹_{j,:}, with H⁻¹'s upper Cholesky
factor (the reference code's ``fasterprune``). The kept weights change; the pruned ones are exactly 0.

The layers go in order (``layerwise``): each one's Hessian comes from the inputs the already-pruned earlier
layers produce. Deterministic: no sampling, ties by position.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..select import num_to_prune, parse_structure
from ..targets import Target
from .layerwise import prune_layerwise

BLOCKSIZE = 128
PERCDAMP = 0.01


def block_counts(sparsity: float, rows: int, cols: int, blocksize: int) -> list[int]:
    """Weights to prune in each block of `blocksize` columns: round(s·rows·end) − round(s·rows·start), so that the
    blocks add up to exactly round(s·rows·cols)."""
    edges = list(range(0, cols, blocksize)) + [cols]
    return [num_to_prune(sparsity, rows * b) - num_to_prune(sparsity, rows * a) for a, b in zip(edges, edges[1:])]


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """The upper Cholesky factor of the dampened inverse Hessian (float64). Columns whose input is always zero
    (dead: diagonal 0) get a unit diagonal; their weights are zeroed by the caller (they never matter)."""
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as err:
        raise InputError(f"the calibration Hessian is not positive definite even with damping {percdamp}: {err}; "
                         "use more calibration samples or a larger damping") from None


@torch.no_grad()
def sparsegpt_solve(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *, structure: str | None = None,
                    blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one linear layer's `weight` (rows × cols) given its inputs' Hessian (cols × cols).

    Returns:
        The updated weight (float32, pruned entries exactly 0) and its keep mask (bool).
    """
    w = weight.detach().to(torch.float64).clone()
    rows, cols = w.shape
    hinv = inverse_hessian_factor(hessian, w, percdamp)
    n, m = parse_structure(structure) if structure else (0, 0)
    if structure and cols % m:
        raise InputError(f"a layer with {cols} inputs has no {structure} structure (not a multiple of {m})")
    if structure:  # blocks of whole groups, so that no group of M straddles two blocks
        blocksize = max(m, blocksize - blocksize % m)
    keep = torch.ones_like(w, dtype=torch.bool)
    counts = block_counts(sparsity, rows, cols, blocksize) if not structure else None
    for b, start in enumerate(range(0, cols, blocksize)):
        end = min(start + blocksize, cols)
        w1, h1 = w[:, start:end].clone(), hinv[start:end, start:end]
        err1 = torch.zeros_like(w1)
        d = torch.diag(h1)
        if not structure:  # the block's mask at once: the lowest saliencies, exactly counts[b], ties by position
            saliency = (w1 * w1 / (d * d).unsqueeze(0)).reshape(-1)
            pruned = torch.sort(saliency, stable=True).indices[: counts[b]]
            keep1 = torch.ones(saliency.numel(), dtype=torch.bool, device=w.device)
            keep1[pruned] = False
            keep1 = keep1.view_as(w1)
        else:
            keep1 = torch.ones_like(w1, dtype=torch.bool)
        for i in range(end - start):
            if structure and i % m == 0:  # N:M: the group's mask as the sweep reaches it, by the updated weights
                group = w1[:, i:i + m] ** 2 / (d[i:i + m] ** 2).unsqueeze(0)
                drop = torch.sort(group, dim=1, stable=True).indices[:, : m - n]
                keep1[:, i:i + m].scatter_(1, drop, False)
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros_like(col))
            e = (col - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, start:end] = w1
        keep[:, start:end] = keep1
        w[:, end:] -= err1 @ hinv[start:end, end:]
    w = torch.where(keep, w, torch.zeros_like(w))
    return w.to(torch.float32), keep


@torch.no_grad()
def sparsegpt_masks(model: nn.Module, batches: list[dict], targets: list[Target], sparsity: float, *,
                    structure: str | None = None, blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP,
                    progress=None) -> dict[str, torch.Tensor]:
    """Prune `model`'s linear targets inside its encoder layers by SparseGPT in place (kept weights updated), layer
    by layer over calibration `batches`; return their keep masks. Other targets are left to the caller."""
    masks: dict[str, torch.Tensor] = {}

    def prune_layer(index: int, modules: dict[str, nn.Linear], feed) -> None:
        hessians = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device)
                    for name, m in modules.items()}
        tokens = dict.fromkeys(modules, 0)

        def gather(name: str, rows: torch.Tensor) -> None:
            x = rows.to(torch.float64)
            hessians[name] += 2.0 * x.t() @ x
            tokens[name] += x.shape[0]

        feed(gather)
        for name, module in modules.items():
            if tokens[name] == 0:
                raise InputError(f"no calibration token reached {name!r}; the calibration batches are all padding")
            new, keep = sparsegpt_solve(module.weight, hessians[name] / tokens[name], sparsity, structure=structure,
                                        blocksize=blocksize, percdamp=percdamp)
            module.weight.copy_(new.to(module.weight.dtype)).add_(0.0)
            masks[name] = keep

    prune_layerwise(model, batches, targets, prune_layer, progress=progress)
    return masks
