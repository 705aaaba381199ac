"""Shared helpers of the analyses: target weights, magnitude masks, head slicing, text and architecture checks."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..select import compute_masks
from ..targets import ATTENTION_KINDS, Target, get_parameter, resolve_targets, split_heads  # noqa: F401 (re-exported)
from ..errors import InputError

logger = logging.getLogger(__name__)



def parse_sparsity(value: float, what: str = "sparsity") -> float:
    """Check that `value` is a fraction of zeros in [0, 1] and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{what} {value!r} is outside [0, 1]; pass the fraction of zeros, e.g. 0.5")
    return float(value)


def target_weights(model: nn.Module, targets: list[Target] | None = None) -> dict[str, torch.Tensor]:
    """The live weights of `targets` (default: all targets of `model`), detached, keyed by target name."""
    targets = resolve_targets(model) if targets is None else targets
    return {t.name: get_parameter(model, t).detach() for t in targets}


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "matrix",
                    targets: list[Target] | None = None) -> dict[str, torch.Tensor]:
    """One-shot magnitude keep masks (True = kept) of `model`'s targets at `sparsity`; the model is not changed."""
    return compute_masks(target_weights(model, targets), parse_sparsity(sparsity), criterion="magnitude", scope=scope)


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor], targets: list[Target]) -> None:
    """Zero the weights of `model` that `masks` prune, in place."""
    for t in targets:
        if t.name in masks:
            param = get_parameter(model, t)
            param.mul_(masks[t.name].to(device=param.device, dtype=param.dtype))


@contextmanager
def pruned(model: nn.Module, masks: dict[str, torch.Tensor], targets: list[Target]) -> Iterator[nn.Module]:
    """Within the block, `model` has the weights `masks` prune zeroed; on exit the originals are restored."""
    saved = {t.name: get_parameter(model, t).detach().clone() for t in targets if t.name in masks}
    try:
        apply_masks_(model, masks, targets)
        yield model
    finally:
        with torch.no_grad():
            for t in targets:
                if t.name in saved:
                    get_parameter(model, t).copy_(saved[t.name])


def check_tokenizer(tokenizer, model: nn.Module, name: str = "the model") -> None:
    """Fail unless `tokenizer` is a real vocabulary for `model`.

    transformers 5 builds a tokenizer of only the special tokens for a directory without tokenizer files;
    such a tokenizer maps all text to unknown tokens, so it is refused like a missing one.

    Raises:
        ValueError: `tokenizer` is None or has fewer than half as many entries as the model's vocabulary.
    """
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if tokenizer is None or len(tokenizer) < vocab / 2:
        found = "no tokenizer" if tokenizer is None else f"a tokenizer of {len(tokenizer)} entries for {vocab} embeddings"
        raise InputError(f"{name} has {found}; pass a model directory with its tokenizer files")


def check_same_architecture(a: nn.Module, b: nn.Module, name_a: str, name_b: str) -> list[tuple[Target, Target]]:
    """Pairs of the same target in `a` and `b`, after checking that both have the same model type and the
    same target names and shapes. Head classes may differ (a ``BertModel`` and a fine-tuned classifier).

    Raises:
        ValueError: naming the first difference.
    """
    type_a, type_b = a.config.model_type, b.config.model_type
    if type_a != type_b:
        raise InputError(f"{name_a!r} is a {type_a} model and {name_b!r} a {type_b} model; compare two checkpoints "
                         "of the same architecture")
    targets_a, targets_b = resolve_targets(a), {t.name: t for t in resolve_targets(b)}
    pairs = []
    for t in targets_a:
        other = targets_b.pop(t.name, None)
        if other is None or other.shape != t.shape:
            got = "missing" if other is None else f"of shape {other.shape}"
            raise InputError(f"{name_a!r} and {name_b!r} differ in architecture: {t.name} {t.shape} is {got} in "
                             f"{name_b!r}; compare two checkpoints of the same architecture")
        pairs.append((t, other))
    if targets_b:
        raise InputError(f"{name_b!r} has target {next(iter(targets_b))} that {name_a!r} lacks; compare two "
                         "checkpoints of the same architecture")
    return pairs
