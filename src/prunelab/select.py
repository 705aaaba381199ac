"""Exact mask selection: prune exactly round(sparsity * n) weights with the lowest scores.

Scopes:
    ``matrix``: a threshold per target; each target loses exactly round(s * n_i) weights.
    ``global``: one threshold over all targets; exactly round(s * N) weights go in total.
    ``row``: a threshold per output row (Wanda's comparison group): each row of a target, along its input axis,
        loses round(s * cols) weights, give or take one so that the target loses exactly round(s * n_i).
N:M structure (``nm_masks``): in every group of M consecutive weights along a target's input dimension exactly N
are kept, the N best-scored (ties by position); the sparsity is 1 - N/M in every target.

Selection is a two-pass radix select on order-preserving int32 keys of the float32 scores: a histogram
of the high 16 bits finds the bucket of the k-th smallest key, a histogram of the low 16 bits inside it
finds the key itself. Ties at that key are broken by position (target order, then flat index), so
results are deterministic. Global scope never concatenates scores: it recomputes one target's scores at
a time, so extra memory is bounded by the largest target, not by the model (torch's
``global_unstructured`` concatenates everything).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

from .scores import get_criterion
from ._moved import forwarder
from .errors import InputError

SCOPES = ("matrix", "global", "row")
_INT32_MIN = -(2**31)  # key reserved for weights already pruned under monotone masks


def num_to_prune(sparsity: float, numel: int) -> int:
    """k = round(sparsity * numel), the exact number of zeros a mask of `sparsity` has."""
    return int(round(sparsity * numel))


def _to_keys_(scores: torch.Tensor, name: str) -> torch.Tensor:
    """Turn fresh float32 `scores` into flat int32 keys with the same order, in place."""
    if scores.dtype != torch.float32 or not scores.is_contiguous():
        scores = scores.to(torch.float32).contiguous()
    if bool(torch.isnan(scores).any()):
        raise InputError(f"scores of {name!r} contain NaN; the weights are corrupt")
    bits = scores.view(-1).view(torch.int32)
    if bool((bits < 0).any()):
        # Negative floats sort in reverse as ints; flipping their 31 low bits restores the order.
        bits ^= (bits >> 31) & 0x7FFFFFFF
    return bits


def _kth_smallest_key(key_passes: Callable[[], Iterator[torch.Tensor]], k: int) -> tuple[int, int]:
    """The k-th smallest key (1-based) over all tensors, and how many keys are strictly below it."""
    hist = torch.zeros(65536, dtype=torch.int64)
    for keys in key_passes():
        hist += torch.bincount((keys >> 16) + 32768, minlength=65536).cpu()
    cum = hist.cumsum(0)
    high = int(torch.searchsorted(cum, k))
    below = int(cum[high - 1]) if high else 0

    hist = torch.zeros(65536, dtype=torch.int64)
    for keys in key_passes():
        in_bucket = keys[(keys >> 16) == high - 32768]
        hist += torch.bincount(in_bucket & 0xFFFF, minlength=65536).cpu()
    cum = hist.cumsum(0)
    low = int(torch.searchsorted(cum, k - below))
    below += int(cum[low - 1]) if low else 0
    return ((high - 32768) << 16) | low, below


def _keep_mask(keys: torch.Tensor, threshold: int, ties: int, shape: torch.Size) -> tuple[torch.Tensor, int]:
    """Keep keys above `threshold`; of the keys equal to it, prune the first `ties`. Returns (mask, ties used)."""
    keep = keys > threshold
    equal = (keys == threshold).nonzero().view(-1)
    if equal.numel() > ties:
        keep[equal[ties:]] = True
    return keep.view(shape), min(ties, equal.numel())


def compute_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    criterion: str = "magnitude",
    scope: str = "matrix",
    seed: int = 0,
    previous: Mapping[str, torch.Tensor] | None = None,
    stats: Mapping[str, torch.Tensor] | None = None,
    input_axes: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that prune exactly round(`sparsity` * n) weights per scope, lowest scores first.

    Args:
        weights: Target name -> weight tensor (any shape, float dtype). Read only.
        sparsity: Fraction of zeros, in [0, 1].
        criterion: Name in ``scores.CRITERIA``.
        scope: ``matrix`` or ``global``.
        seed: Seed of stochastic criteria.
        previous: Keep masks from an earlier update; weights they prune stay pruned (monotone masks).
            The new sparsity must then be at least the previous one in each scope.
        stats: Target name -> what the criterion needs beyond the weight (``scores``: movement, Wanda).
        input_axes: Target name -> its input axis (``row`` scope; default the last).

    Returns:
        Target name -> bool keep mask (True = kept) of the weight's shape and device.

    Raises:
        ValueError: bad sparsity or scope, or a sparsity below what `previous` already prunes.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity {sparsity} is outside [0, 1]; pass the fraction of zeros, e.g. 0.5")
    if scope not in SCOPES:
        raise InputError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    score_fn = get_criterion(criterion)
    names = list(weights)

    if scope == "row":
        return row_masks(weights, sparsity, criterion=criterion, seed=seed, previous=previous, stats=stats,
                         input_axes=input_axes)

    def keys_of(name: str) -> torch.Tensor:
        keys = _to_keys_(score_fn(weights[name], name=name, seed=seed, stat=(stats or {}).get(name)), name)
        if previous is not None:
            keys.masked_fill_(~previous[name].view(-1).to(keys.device), _INT32_MIN)
        return keys

    def select(group: list[str], cached: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        total = sum(weights[n].numel() for n in group)
        k = num_to_prune(sparsity, total)
        if previous is not None:
            already = sum(int((~previous[n]).sum()) for n in group)
            if k < already:
                raise InputError(
                    f"sparsity {sparsity} prunes {k} weights but {already} are already pruned and masks are "
                    "monotone; raise the sparsity or allow regrowth (regrow=True)"
                )
        if k == 0 or k == total:  # explicit: no threshold exists for "none" or "all"
            return {n: torch.full_like(weights[n], k == 0, dtype=torch.bool) for n in group}
        passes = (lambda: iter([cached])) if cached is not None else (lambda: map(keys_of, group))
        threshold, below = _kth_smallest_key(passes, k)
        ties, masks = k - below, {}
        for n in group:
            masks[n], used = _keep_mask(cached if cached is not None else keys_of(n), threshold, ties, weights[n].shape)
            ties -= used
        return masks

    if scope == "global":
        return select(names)
    return {n: select([n], cached=keys_of(n))[n] for n in names}


def row_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *, criterion: str = "magnitude", seed: int = 0,
              previous: Mapping[str, torch.Tensor] | None = None, stats: Mapping[str, torch.Tensor] | None = None,
              input_axes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Masks that prune the lowest-scored weights of each output row (along each target's input axis, default the
    last): row r of a target with `cols` inputs loses round(s·cols·(r+1)) − round(s·cols·r) weights, so every row
    loses round(s·cols) give or take one and the target exactly round(s·n). Ties go by position; weights
    `previous` prunes go first."""
    score_fn = get_criterion(criterion)
    masks = {}
    for name, weight in weights.items():
        axis = (input_axes or {}).get(name, -1) % weight.dim()
        scores = score_fn(weight, name=name, seed=seed, stat=(stats or {}).get(name)).to(torch.float32)
        if bool(torch.isnan(scores).any()):
            raise InputError(f"scores of {name!r} contain NaN; the weights are corrupt")
        if previous is not None:
            scores = scores.masked_fill(~previous[name].to(scores.device), float("-inf"))
        moved = scores.movedim(axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        cols = rows.shape[1]
        bounds = torch.round(sparsity * cols * torch.arange(rows.shape[0] + 1, dtype=torch.float64)).long()
        counts = (bounds[1:] - bounds[:-1]).to(rows.device)  # weights each row loses
        order = torch.sort(rows, dim=1, stable=True).indices  # lowest first, ties by position
        pruned = torch.arange(cols, device=rows.device).unsqueeze(0) < counts.unsqueeze(1)
        keep = torch.ones_like(rows, dtype=torch.bool).scatter_(1, order, ~pruned)
        masks[name] = keep.reshape(moved.shape).movedim(-1, axis).contiguous()
    return masks


def parse_structure(structure: str) -> tuple[int, int]:
    """``"N:M"`` as ``(N, M)``, 0 <= N <= M, M >= 1."""
    try:
        n, m = (int(x) for x in str(structure).split(":"))
    except ValueError:
        raise InputError(f"structure {structure!r} is not N:M (e.g. 2:4: keep 2 of every 4 weights)") from None
    if not 0 <= n <= m or m < 1:
        raise InputError(f"structure {structure!r}: need 0 <= N <= M and M >= 1, e.g. 2:4")
    return n, m


def nm_masks(weights: Mapping[str, torch.Tensor], structure: str, *, criterion: str = "magnitude", seed: int = 0,
             input_axes: Mapping[str, int] | None = None, previous: Mapping[str, torch.Tensor] | None = None,
             stats: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep masks with exactly N kept in every group of M consecutive weights along each target's input axis
    (`input_axes`: name -> axis, default the last), the N highest-scored, ties broken by position; weights
    `previous` prunes stay pruned while a group has enough others.

    Raises:
        ValueError: a malformed structure, or a target whose input dimension is not a multiple of M (naming it).
    """
    n, m = parse_structure(structure)
    score_fn = get_criterion(criterion)
    masks = {}
    for name, weight in weights.items():
        axis = (input_axes or {}).get(name, -1) % weight.dim()
        if weight.shape[axis] % m:
            raise InputError(f"{name!r}: its input dimension ({weight.shape[axis]}) is not a multiple of {m}, so it "
                             f"has no {n}:{m} structure; exclude its kind or choose another M")
        scores = score_fn(weight, name=name, seed=seed, stat=(stats or {}).get(name)).to(torch.float32)
        if previous is not None:
            scores = scores.masked_fill(~previous[name].to(scores.device), float("-inf"))
        moved = scores.movedim(axis, -1)
        groups = moved.reshape(*moved.shape[:-1], -1, m)
        order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
        masks[name] = keep.reshape(moved.shape).movedim(-1, axis).contiguous()
    return masks


# Old place of a moved name (deprecated: removed in the next release).
__getattr__ = forwarder(__name__, [], {"mask_sparsity": ("prunelab.sparsity", "mask_sparsity")})
