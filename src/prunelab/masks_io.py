"""Keep masks on disk: one safetensors file of bool tensors (True = kept), keyed by target name."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import atomic_output

MASKS_FILE = "masks.safetensors"

def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save keep masks (bool) to a safetensors file, atomically."""
    with atomic_output(path) as tmp:
        save_file({n: m.detach().to("cpu", torch.bool).contiguous() for n, m in masks.items()}, str(tmp),
                  metadata={"format": "prunelab-masks", "convention": "True = kept"})


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load keep masks saved by ``save_masks``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid safetensors file of bool masks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    try:
        masks = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"mask file {path} is corrupt or not safetensors ({str(err).splitlines()[0]}); re-create it") from None
    bad = [n for n, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise ValueError(f"mask file {path} holds non-boolean tensor {bad[0]!r}; masks are bool (True = kept)")
    return masks


def check_masks(masks: dict[str, torch.Tensor], targets, source: str = "masks") -> None:
    """Fail unless `masks` has exactly one mask of the right shape per target (a ``targets.Target`` list).

    Raises:
        ValueError: naming a missing or unexpected target, or a mask whose shape is not its weight's.
    """
    names = {t.name for t in targets}
    missing, extra = sorted(names - set(masks)), sorted(set(masks) - names)
    if missing or extra:
        raise ValueError(f"{source} do not match the model's targets: missing {missing[:3]}, unexpected {extra[:3]}; "
                         "were they saved for another architecture or another include/exclude selection?")
    for t in targets:
        if tuple(masks[t.name].shape) != t.shape:
            raise ValueError(f"{source}: the mask of {t.name!r} has shape {tuple(masks[t.name].shape)}, the weight {t.shape}")
