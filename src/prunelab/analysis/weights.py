"""Measurements of one model's weights: statistics, pruned weight mass, per-head pruning and magnitude heatmaps."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..select import compute_masks
from ..methods.structured import unit_counts
from ..targets import KINDS, Target, get_parameter, num_heads, resolve_targets
from .common import ATTENTION_KINDS, check_tokenizer, parse_sparsity, split_heads, target_weights
from ..errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_SPARSITIES = tuple(i / 10 for i in range(10))  # 0%, 10%, ..., 90%
# Markers of subword position that are not characters of the subword (WordPiece, SentencePiece, byte BPE).
_SUBWORD_MARKERS = ("##", "\u2581", "\u0120")


def _pooled(acc: dict) -> dict:
    """Mean and sample std (n - 1) from accumulated count, sum and sum of squares."""
    n, mean = acc["numel"], acc["sum"] / acc["numel"]
    var = (acc["sumsq"] - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return {"numel": n, "mean": mean, "std": math.sqrt(max(var, 0.0)), "mean_abs": acc["sum_abs"] / n,
            "sparsity": acc["zeros"] / n}


def weight_stats(model: nn.Module, targets: list[Target] | None = None) -> dict:
    """Mean and standard deviation of every target matrix, and pooled per kind and overall [Table 3].

    Args:
        model: A supported model.
        targets: Default: all targets of `model`.

    Returns:
        ``{"targets": [row, ...], "by_kind": {kind: stats}, "overall": stats}``; a row has ``name``,
        ``kind``, ``layer``, ``shape`` and the stats ``numel``, ``mean``, ``std`` (sample std, as
        ``torch.std``), ``mean_abs``, ``min``, ``max``, ``sparsity`` (fraction of exact zeros).
    """
    targets = resolve_targets(model) if targets is None else targets
    rows, by_kind = [], {}
    total = {"numel": 0, "sum": 0.0, "sumsq": 0.0, "sum_abs": 0.0, "zeros": 0}
    for t in targets:
        w = get_parameter(model, t).detach().double()
        acc = {"numel": t.numel, "sum": float(w.sum()), "sumsq": float((w * w).sum()), "sum_abs": float(w.abs().sum()),
               "zeros": t.numel - int(torch.count_nonzero(w))}
        rows.append({"name": t.name, "kind": t.kind, "layer": t.layer, "shape": list(t.shape), **_pooled(acc),
                     "min": float(w.min()), "max": float(w.max())})
        for bucket in (by_kind.setdefault(t.kind, dict.fromkeys(total, 0)), total):
            for key in total:
                bucket[key] += acc[key]
    return {"targets": rows, "by_kind": {k: _pooled(by_kind[k]) for k in KINDS if k in by_kind}, "overall": _pooled(total)}


def pruned_mass(model: nn.Module, sparsities=DEFAULT_SPARSITIES, *, scope: str = "matrix",
                targets: list[Target] | None = None) -> dict:
    """Sum of |w| that one-shot magnitude pruning removes at each sparsity, overall and by kind [Figure 5].

    Args:
        model: A supported model (not changed).
        sparsities: Fractions of zeros in [0, 1].
        scope: ``matrix`` (each target pruned to the sparsity) or ``global``.
        targets: Default: all targets of `model`.

    Returns:
        ``{"total_mass": {kind: sum |w|, ..., "all": ...}, "rows": [...]}``; one row per (sparsity, kind)
        plus kind ``all``, with ``pruned_mass`` (sum of the |w| pruned), ``fraction`` (of that kind's
        total |w| mass) and ``pruned`` (count of weights pruned).
    """
    targets = resolve_targets(model) if targets is None else targets
    weights = target_weights(model, targets)
    kinds = [k for k in KINDS if any(t.kind == k for t in targets)]
    total = {k: 0.0 for k in kinds}
    for t in targets:
        total[t.kind] += float(weights[t.name].abs().sum(dtype=torch.float64))
    total["all"] = sum(total.values())
    rows = []
    for s in sparsities:
        masks = compute_masks(weights, parse_sparsity(s), criterion="magnitude", scope=scope)
        mass, count = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0)
        for t in targets:
            keep = masks[t.name]
            mass[t.kind] += float(weights[t.name].abs().masked_fill(keep, 0).sum(dtype=torch.float64))
            count[t.kind] += t.numel - int(keep.sum())
        mass["all"], count["all"] = sum(mass.values()), sum(count.values())
        for k in [*kinds, "all"]:
            rows.append({"sparsity": float(s), "kind": k, "pruned_mass": mass[k], "pruned": count[k],
                         "fraction": mass[k] / total[k] if total[k] else 0.0})
    return {"scope": scope, "total_mass": total, "rows": rows}


def head_pruning(model: nn.Module, sparsities=DEFAULT_SPARSITIES) -> dict:
    """Fraction of each attention head's weights that one-shot magnitude pruning removes [Figure 4 left].

    Each attention matrix (query, key, value, attention output; XLNet's relative position too) is
    pruned on its own (matrix scope) and split into heads with ``split_heads``.

    Returns:
        ``{"heads": H (a list per layer when the layers differ), "rows": [...], "summary": [...]}``: ``rows`` has one entry per (sparsity, matrix,
        head) with ``fraction`` pruned; ``summary`` one per (sparsity, kind) plus kind ``all``, with the
        ``min``, ``mean``, ``max`` and ``std`` of that fraction over heads.
    """
    targets = [t for t in resolve_targets(model) if t.kind in ATTENTION_KINDS]
    per_layer = unit_counts(model)["heads"]  # a structurally pruned model has its own count per layer
    targets = [t for t in targets if per_layer[t.layer]]  # a layer without heads has no head to measure
    heads = num_heads(model) if len(set(per_layer)) == 1 else per_layer
    weights = target_weights(model, targets)
    rows, summary = [], []
    for s in sparsities:
        masks = compute_masks(weights, parse_sparsity(s), criterion="magnitude", scope="matrix")
        per_kind: dict[str, list[torch.Tensor]] = {}
        for t in targets:
            n = per_layer[t.layer]
            fraction = 1.0 - split_heads(masks[t.name], t.kind, n).reshape(n, -1).double().mean(dim=1)
            per_kind.setdefault(t.kind, []).append(fraction)
            rows += [{"sparsity": float(s), "name": t.name, "kind": t.kind, "layer": t.layer, "head": h,
                      "fraction": float(f)} for h, f in enumerate(fraction)]
        groups = {k: torch.cat(v) for k, v in per_kind.items()}
        groups["all"] = torch.cat(list(groups.values()))
        for kind, fractions in groups.items():
            summary.append({"sparsity": float(s), "kind": kind, "min": float(fractions.min()), "mean": float(fractions.mean()),
                            "max": float(fractions.max()), "std": float(fractions.std()) if fractions.numel() > 1 else 0.0})
    return {"heads": heads, "rows": rows, "summary": summary}


def key_heatmap(model: nn.Module, layer: int) -> dict:
    """|w| of a layer's key projection with the heads side by side [Figure 7].

    Returns:
        ``{"name", "layer", "heads", "d_head", "magnitude", "head_mean_abs"}``: ``magnitude`` is a float32
        tensor of shape ``(d_model, heads * d_head)`` whose column block ``h`` is head ``h`` (input
        dimension down, the head's output units across); ``head_mean_abs`` the mean |w| per head.
    """
    targets = [t for t in resolve_targets(model, include=["key"], layers=[layer]) if t.kind == "key"]
    target, heads = targets[0], unit_counts(model)["heads"][layer]
    if heads == 0:
        raise InputError(f"layer {layer} has no attention head left (structured pruning); choose another --layer")
    per_head = split_heads(get_parameter(model, target).detach().float().abs(), "key", heads)  # (H, d_head, d_model)
    magnitude = per_head.permute(2, 0, 1).reshape(per_head.shape[2], -1)  # (d_model, H * d_head)
    return {"name": target.name, "layer": layer, "heads": heads, "d_head": per_head.shape[1], "magnitude": magnitude,
            "head_mean_abs": [float(x) for x in per_head.reshape(heads, -1).mean(dim=1)]}


def subword_length(token: str | None) -> int:
    """Characters of a vocabulary entry without its word-boundary markers (``##``, ``▁``, ``Ġ``)."""
    if token is None:
        return 0
    for marker in _SUBWORD_MARKERS:
        if token.startswith(marker) and len(token) > len(marker):
            return len(token) - len(marker)
    return len(token)


def embedding_heatmap(model: nn.Module, tokenizer) -> dict:
    """Word-embedding |w| with rows sorted by subword length, shortest first [Figure 7].

    Rows beyond the tokenizer's vocabulary (padding rows of the matrix) are left out; equal lengths keep
    id order.

    Raises:
        ValueError: no tokenizer, or one without a vocabulary (see ``check_tokenizer``).

    Returns:
        ``{"name", "magnitude", "lengths", "token_ids", "by_length"}``: ``magnitude`` float32 of shape
        ``(rows, d_embed)``, ``lengths`` int64 ``(rows,)`` ascending, ``token_ids`` the row ids in that
        order, ``by_length`` one entry per length with ``count`` and ``mean_abs``.
    """
    check_tokenizer(tokenizer, model)
    target = next(t for t in resolve_targets(model) if t.kind == "embeddings")
    weight = get_parameter(model, target).detach().float().abs()
    rows = min(weight.shape[0], len(tokenizer))
    lengths = torch.tensor([subword_length(tok) for tok in tokenizer.convert_ids_to_tokens(list(range(rows)))])
    order = torch.argsort(lengths, stable=True)
    magnitude, lengths = weight[:rows][order], lengths[order]
    row_mean = magnitude.mean(dim=1)
    by_length = [{"length": int(n), "count": int((lengths == n).sum()), "mean_abs": float(row_mean[lengths == n].mean())}
                 for n in torch.unique(lengths)]
    return {"name": target.name, "magnitude": magnitude, "lengths": lengths, "token_ids": order, "by_length": by_length}
