"""Feature similarity of hidden states between models, and per-layer / per-kind pruning sensitivity."""

from __future__ import annotations

import copy
import inspect
import logging

import torch
from torch import nn

from ..select import compute_masks
from ..targets import KINDS, Target, resolve_targets
from .common import check_same_architecture, check_tokenizer, parse_sparsity, pruned, target_weights
from ..errors import InputError

logger = logging.getLogger(__name__)

METRICS = ("auto", "similarity", "mlm_loss")
GROUPINGS = ("layer", "kind")


def encode(tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """Tokenize `texts` into padded batches (each a dict of ``(batch, seq)`` tensors, with ``special_tokens_mask``)."""
    if tokenizer is None:
        raise InputError("the model has no tokenizer; pass a model directory with tokenizer files (or a --reference "
                         "that has one)")
    if batch_size < 1 or max_length < 2:
        raise InputError(f"batch_size {batch_size} must be >= 1 and max_length {max_length} >= 2")
    return [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt", return_special_tokens_mask=True))
            for i in range(0, len(texts), batch_size)]


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; never fail an analysis for it
        logger.info("tqdm is not installed; no progress bar (pip install 'prunelab[analysis]')")
        return items
    return tqdm(items, desc=desc, unit="batch", leave=False)


def _model_inputs(model: nn.Module, batch: dict, device) -> dict:
    """The tensors of `batch` that `model`'s forward takes (DistilBERT takes no ``token_type_ids``), on `device`."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v.to(device) for k, v in batch.items() if k in accepted and k != "labels"}


@torch.no_grad()
def layer_similarity(model: nn.Module, reference: nn.Module, batches: list[dict], *, device: str = "cpu",
                     progress: bool = False, desc: str = "similarity") -> dict:
    """Layer-wise cosine similarity of token hidden states between `model` and `reference` [Figure 2 right].

    For every non-padding token (special tokens included) and every hidden-state layer (0 = embedding
    output, 1..L = the layers' outputs), the cosine of the two models' vectors; averaged over tokens.

    Args:
        model, reference: Models with the same tokenizer and hidden size; both are run as their base model.
        batches: From ``encode``.
        device: Where to run the forward passes.

    Returns:
        ``{"mean": [L+1 floats], "std": [L+1 floats], "tokens": count}``.
    """
    sums = sumsq = None
    tokens = 0
    for batch in _progress(batches, desc, progress):
        inputs = _model_inputs(reference.base_model, batch, device)
        keep = inputs["attention_mask"].bool()
        states = model.base_model(**inputs, output_hidden_states=True).hidden_states
        ref_states = reference.base_model(**inputs, output_hidden_states=True).hidden_states
        cos = torch.stack([nn.functional.cosine_similarity(h[keep].float(), r[keep].float(), dim=-1)
                           for h, r in zip(states, ref_states)]).double()  # (L+1, tokens)
        sums = cos.sum(dim=1) if sums is None else sums + cos.sum(dim=1)
        sumsq = cos.square().sum(dim=1) if sumsq is None else sumsq + cos.square().sum(dim=1)
        tokens += int(keep.sum())
    if not tokens:
        raise InputError("the text sample has no tokens; pass a text file with non-empty lines")
    mean = sums / tokens
    std = ((sumsq - tokens * mean.square()) / max(tokens - 1, 1)).clamp(min=0).sqrt()
    return {"mean": [float(x) for x in mean], "std": [float(x) for x in std], "tokens": tokens}


def similarity_curves(reference: nn.Module, batches: list[dict], *, sparsities=(), models: dict[str, nn.Module] | None = None,
                      scope: str = "matrix", device: str = "cpu", progress: bool = False,
                      reference_name: str = "reference") -> dict:
    """Layer-wise similarity to `reference` of given models and of `reference` pruned one-shot at each sparsity.

    Args:
        reference: The unpruned model every curve is compared with.
        batches: From ``encode``.
        sparsities: For each, the reference is pruned by magnitude (in a working copy) and compared.
        models: Label -> model (same architecture as `reference`), each compared as is.
        scope: Scope of the one-shot pruning.
        reference_name: How to name the reference in errors.

    Returns:
        ``{"layers": [0..L], "tokens": count, "curves": [{"label", "sparsity", "mean", "std"}, ...]}``;
        ``sparsity`` is ``None`` for the curves of `models`.
    """
    models = models or {}
    if not sparsities and not models:
        raise InputError("nothing to compare: give a model to compare with the reference, or sparsities to prune it at")
    reference.to(device).eval()
    curves = []
    for label, model in models.items():
        check_same_architecture(reference, model, reference_name, label)
        model.to(device).eval()
        result = layer_similarity(model, reference, batches, device=device, progress=progress, desc=label)
        curves.append({"label": label, "sparsity": None, "mean": result["mean"], "std": result["std"]})
    if sparsities:
        targets = resolve_targets(reference)
        weights = target_weights(reference, targets)
        work = copy.deepcopy(reference).to(device).eval()
        for s in sparsities:
            masks = compute_masks(weights, parse_sparsity(s), criterion="magnitude", scope=scope)
            label = f"one-shot {100 * s:g}%"
            with pruned(work, masks, targets):
                result = layer_similarity(work, reference, batches, device=device, progress=progress, desc=label)
            curves.append({"label": label, "sparsity": float(s), "mean": result["mean"], "std": result["std"]})
        del work
    return {"layers": list(range(len(curves[0]["mean"]))), "tokens": result["tokens"], "scope": scope, "curves": curves}


def has_mlm_head(model: nn.Module) -> bool:
    """True for ``...ForMaskedLM`` models (whose loss on masked tokens ``mlm_loss`` measures)."""
    return type(model).__name__.endswith("ForMaskedLM")


def mask_tokens(batches: list[dict], tokenizer, *, probability: float = 0.15, seed: int = 0) -> list[dict]:
    """Copies of `batches` with `probability` of the non-special tokens replaced by the mask token, and ``labels``
    (the original ids there, -100 elsewhere). Deterministic in `seed`."""
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise InputError("the tokenizer has no mask token, so no MLM loss; use --metric similarity")
    generator, out = torch.Generator().manual_seed(seed), []
    for batch in batches:
        candidates = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        chosen = (torch.rand(candidates.shape, generator=generator) < probability) & candidates
        labels = torch.where(chosen, batch["input_ids"], torch.full_like(batch["input_ids"], -100))
        out.append({**batch, "input_ids": batch["input_ids"].masked_fill(chosen, tokenizer.mask_token_id), "labels": labels})
    return out


@torch.no_grad()
def mlm_loss(model: nn.Module, batches: list[dict], *, device: str = "cpu", progress: bool = False,
             desc: str = "mlm loss") -> float:
    """Mean cross-entropy (nats per masked token) of an MLM model on batches from ``mask_tokens``."""
    total, count = 0.0, 0
    for batch in _progress(batches, desc, progress):
        n = int((batch["labels"] != -100).sum())
        if n:
            loss = model(**_model_inputs(model, batch, device), labels=batch["labels"].to(device)).loss
            total, count = total + float(loss) * n, count + n
    if not count:
        raise InputError("no token of the text sample was masked; pass more text")
    return total / count


def _groups(targets: list[Target], by: str) -> dict[str, list[Target]]:
    """Targets grouped by layer (layerless ones by kind) or by kind. The pooler is left out: neither the
    hidden states nor an MLM head read it, so pruning it alone changes neither metric."""
    targets = [t for t in targets if t.kind != "pooler"]
    groups: dict[str, list[Target]] = {}
    if by == "kind":
        for kind in KINDS:
            members = [t for t in targets if t.kind == kind]
            if members:
                groups[kind] = members
        return groups
    for t in sorted(targets, key=lambda t: (t.layer is not None, t.layer or 0)):
        groups.setdefault(t.kind if t.layer is None else f"layer {t.layer}", []).append(t)
    return groups


def sensitivity(model: nn.Module, tokenizer, texts: list[str], sparsity: float, *, by: str = "layer", metric: str = "auto",
                batch_size: int = 16, max_length: int = 128, device: str = "cpu", progress: bool = False, seed: int = 0) -> dict:
    """How much pruning only one layer (or one kind) to `sparsity` changes the model.

    Each group (``layer N`` and ``embeddings`` when `by` = ``layer``; each kind when ``kind``; never the
    pooler, which neither metric reads) is pruned alone by magnitude (matrix scope) and the metric
    measured; then all targets together (group ``all``) for scale. `model` is restored afterwards.

    Args:
        model: Any supported model.
        tokenizer: Its tokenizer.
        texts: The text sample.
        sparsity: Fraction of zeros each group is pruned to.
        by: ``layer`` or ``kind``.
        metric: ``similarity`` (mean cosine similarity of the last hidden state with the unpruned model),
            ``mlm_loss`` (needs a ``...ForMaskedLM`` model), or ``auto`` (``mlm_loss`` when possible).
        seed: Seed of the MLM token masking.

    Returns:
        ``{"metric", "sparsity", "by", "baseline", "rows": [{"group", "targets", "numel", "value", "delta"}]}``;
        ``delta`` = value - baseline (loss increase, or similarity drop as a negative number).

    Raises:
        ValueError: a sparsity outside [0, 1], an unknown grouping or metric, no usable tokenizer, or
            ``mlm_loss`` for a model without a masked-LM head.
    """
    sparsity = parse_sparsity(sparsity)
    if by not in GROUPINGS:
        raise InputError(f"unknown grouping {by!r}; allowed: {', '.join(GROUPINGS)}")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if metric == "auto":
        metric = "mlm_loss" if has_mlm_head(model) and getattr(tokenizer, "mask_token_id", None) is not None else "similarity"
    if metric == "mlm_loss" and not has_mlm_head(model):
        raise InputError(f"{type(model).__name__} has no masked-LM head, so no MLM loss; use --metric similarity")
    check_tokenizer(tokenizer, model)
    model = model.to(device).eval()
    batches = encode(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    targets = resolve_targets(model)
    groups = {**_groups(targets, by), "all": targets}

    if metric == "mlm_loss":
        batches = mask_tokens(batches, tokenizer, seed=seed)
        baseline = mlm_loss(model, batches, device=device, progress=progress, desc="unpruned")
        reference = None
    else:
        baseline, reference = 1.0, copy.deepcopy(model)
    rows = []
    for group, members in groups.items():
        masks = compute_masks(target_weights(model, members), sparsity, criterion="magnitude", scope="matrix")
        with pruned(model, masks, members):
            if metric == "mlm_loss":
                value = mlm_loss(model, batches, device=device, progress=progress, desc=group)
            else:
                value = layer_similarity(model, reference, batches, device=device, progress=progress, desc=group)["mean"][-1]
        rows.append({"group": group, "targets": len(members), "numel": sum(t.numel for t in members),
                     "value": value, "delta": value - baseline})
        logger.info("sensitivity %s at %.0f%%: %s %.4f", group, 100 * sparsity, metric, value)
    return {"metric": metric, "sparsity": sparsity, "by": by, "baseline": baseline, "rows": rows}
