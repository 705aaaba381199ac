"""Sparsity reports: the realized fraction of zeros in a model's targets, per target, kind, layer and overall."""

from __future__ import annotations

import torch
from torch import nn

from .targets import KINDS, Target, get_parameter


def mask_sparsity(*masks: torch.Tensor) -> float:
    """The fraction of zeros (False entries) over keep `masks` together (0.0 for none, or for no entries)."""
    total = sum(m.numel() for m in masks)
    return sum(m.numel() - int(m.sum()) for m in masks) / total if total else 0.0


def sparsity_report(model: nn.Module, targets: list[Target], masks: dict[str, torch.Tensor] | None = None) -> dict:
    """Measure the zeros of the live weights of `targets` in `model`.

    Args:
        model: The model holding the weights.
        targets: From ``resolve_targets``.
        masks: Optional keep masks; adds each target's ``mask_sparsity``.

    Returns:
        ``{"targets": [...], "by_kind": {...}, "by_layer": {...}, "overall": {...}}``; each entry has
        ``numel``, ``zeros`` and ``sparsity`` (= zeros / numel). Layers are keyed by their index as a
        string, or ``"none"`` for embeddings and pooler.
    """
    rows, by_kind, by_layer = [], {}, {}
    total = {"numel": 0, "zeros": 0}
    for t in targets:
        weight = get_parameter(model, t).detach()
        zeros = t.numel - int(torch.count_nonzero(weight))
        row = {"name": t.name, "kind": t.kind, "layer": t.layer, "shape": list(t.shape), "numel": t.numel,
               "zeros": zeros, "sparsity": zeros / t.numel}
        if masks and t.name in masks:
            row["mask_sparsity"] = mask_sparsity(masks[t.name])
        rows.append(row)
        for bucket in (by_kind.setdefault(t.kind, {"numel": 0, "zeros": 0}),
                       by_layer.setdefault("none" if t.layer is None else str(t.layer), {"numel": 0, "zeros": 0}),
                       total):
            bucket["numel"] += t.numel
            bucket["zeros"] += zeros
    for bucket in [*by_kind.values(), *by_layer.values(), total]:
        bucket["sparsity"] = bucket["zeros"] / bucket["numel"] if bucket["numel"] else 0.0
    by_kind = {k: by_kind[k] for k in KINDS if k in by_kind}
    return {"targets": rows, "by_kind": by_kind, "by_layer": by_layer, "overall": total}
