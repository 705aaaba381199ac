"""Mask difference: how many weights one mask prunes that another keeps, per matrix and overall."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..artifact import from_pretrained, resolve_model_path
from ..masks_io import MASKS_FILE, load_masks
from ..targets import KINDS, kind_and_layer
from .common import check_same_architecture, magnitude_masks, parse_sparsity
from ..errors import InputError

logger = logging.getLogger(__name__)


def random_baseline(sparsity_a: float, sparsity_b: float) -> float:
    """Expected fraction of weights on which two independent random masks disagree: s_a(1-s_b) + s_b(1-s_a)."""
    return sparsity_a * (1 - sparsity_b) + sparsity_b * (1 - sparsity_a)


def _counts(pruned_a: int, pruned_b: int, a_only: int, b_only: int, numel: int) -> dict:
    return {
        "numel": numel,
        "sparsity_a": pruned_a / numel,
        "sparsity_b": pruned_b / numel,
        "a_only": a_only / numel,  # pruned by A, kept by B
        "b_only": b_only / numel,  # pruned by B, kept by A
        "differ": (a_only + b_only) / numel,
        "a_pruned_b_keeps": a_only / pruned_a if pruned_a else 0.0,
        "random_baseline": random_baseline(pruned_a / numel, pruned_b / numel),
    }


def mask_difference(masks_a: dict[str, torch.Tensor], masks_b: dict[str, torch.Tensor]) -> dict:
    """Compare two sets of keep masks (True = kept) of the same targets [Figure 3].

    Args:
        masks_a, masks_b: Target name -> bool mask; the same names and shapes.

    Returns:
        ``{"targets": [...], "by_kind": {...}, "overall": {...}}``. Each entry has ``numel``,
        ``sparsity_a``/``sparsity_b``, ``a_only`` (fraction of weights A prunes and B keeps), ``b_only``,
        ``differ`` (= a_only + b_only, the fraction on which the masks disagree), ``a_pruned_b_keeps``
        (the share of A's pruned weights that B keeps) and ``random_baseline`` (the expected ``differ`` of
        two independent random masks of these sparsities). Target rows also carry ``name``, ``kind`` and
        ``layer`` (from the architecture tables; ``None`` when no table knows the name).

    Raises:
        ValueError: the mask sets differ in names or shapes.
    """
    if set(masks_a) != set(masks_b):
        only = sorted(set(masks_a) ^ set(masks_b))[0]
        side = "the first" if only in masks_a else "the second"
        raise InputError(f"the masks cover different weights: {only!r} is only in {side}; compare masks of the same "
                         "architecture and include/exclude selection")
    rows, kinds, total = [], {}, [0, 0, 0, 0, 0]
    for name in masks_a:
        a, b = masks_a[name].bool(), masks_b[name].to(masks_a[name].device).bool()
        if a.shape != b.shape:
            raise InputError(f"mask {name!r} has shape {tuple(a.shape)} in the first set and {tuple(b.shape)} in the "
                             "second; compare masks of the same architecture")
        counts = [a.numel() - int(a.sum()), b.numel() - int(b.sum()), int((~a & b).sum()), int((a & ~b).sum()), a.numel()]
        kind, layer = kind_and_layer(name)
        rows.append({"name": name, "kind": kind, "layer": layer, **_counts(*counts)})
        for bucket in (kinds.setdefault(kind or "other", [0, 0, 0, 0, 0]), total):
            for i, c in enumerate(counts):
                bucket[i] += c
    order = [k for k in (*KINDS, "other") if k in kinds]
    return {"targets": rows, "by_kind": {k: _counts(*kinds[k]) for k in order},
            "overall": _counts(*total) if total[4] else {}}


def load_mask_source(source: str, sparsity: float | None = None, *, scope: str = "matrix"):
    """Keep masks of `source`: a masks file, an artifact's saved masks, or a model pruned by magnitude.

    Args:
        source: A ``masks.safetensors`` file; a pruned artifact directory; or any model (directory, hub
            id, alias) when `sparsity` is given.
        sparsity: If given, the masks are those of one-shot magnitude pruning of the model's live weights
            at this sparsity (an artifact is re-pruned; its zeros go first). If ``None``, saved masks are
            read.
        scope: Scope of the magnitude pruning.

    Returns:
        ``(masks, model)``: ``model`` is the loaded model, or ``None`` when `source` was a masks file.

    Raises:
        ValueError: a masks file with `sparsity`, or a model without saved masks and no `sparsity`.
    """
    path = Path(resolve_model_path(source))
    if path.is_file():
        if sparsity is not None:
            raise InputError(f"{source!r} is a masks file; --sparsity applies only to models, so drop it or pass the "
                             "model directory instead")
        return load_masks(path), None
    model, _, masks, _ = from_pretrained(source)
    if sparsity is not None:
        return magnitude_masks(model, parse_sparsity(sparsity), scope=scope), model
    if masks is None:
        raise InputError(f"model {source!r} has no {MASKS_FILE}; pass --sparsity S to prune both models by magnitude "
                         "at S, or pass a pruned artifact")
    return masks, model


def compare_masks(source_a: str, source_b: str, sparsity: float | None = None, *, scope: str = "matrix") -> dict:
    """``mask_difference`` of two sources (see ``load_mask_source``); e.g. a model before and after training,
    both pruned at `sparsity`.

    Raises:
        ValueError: the two models differ in architecture, or see ``load_mask_source``.
    """
    masks_a, model_a = load_mask_source(source_a, sparsity, scope=scope)
    masks_b, model_b = load_mask_source(source_b, sparsity, scope=scope)
    if model_a is not None and model_b is not None:
        check_same_architecture(model_a, model_b, source_a, source_b)
    result = mask_difference(masks_a, masks_b)
    return {"a": source_a, "b": source_b, "sparsity": sparsity, "scope": scope, **result}
