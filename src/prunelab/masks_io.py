"""Keep masks on disk: one safetensors file of bit-packed masks (a set bit = kept), keyed by target name.

Layout (the sparse-bitmask layout of the ecosystem): a mask of shape ``(..., cols)`` is stored as a uint8 tensor
``[rows, ceil(cols / 8)]``, rows = the product of the leading dimensions (1 for a vector), bits packed along the
last dimension in little-endian bit order (column ``j`` is bit ``j % 8`` of byte ``j // 8``); padding bits are 0.
The file's metadata holds ``format = prunelab-masks``, ``packing = bits-little`` and ``shapes``, a JSON object of
each mask's shape. Files of one bool byte per weight (``packing`` absent), written before, still load.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .io import atomic_output
from .errors import InputError, MissingInputError

MASKS_FILE = "masks.safetensors"
PACKING = "bits-little"


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask of shape ``(..., cols)`` as uint8 bits ``[rows, ceil(cols / 8)]`` (see the module docstring)."""
    flat = mask.detach().to("cpu", torch.bool).reshape(-1, mask.shape[-1] if mask.dim() else 1).numpy()
    return torch.from_numpy(np.packbits(flat, axis=-1, bitorder="little"))


def unpack_mask(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool mask of `shape` that ``pack_mask`` packed into `bits`; checks the packed shape."""
    cols = shape[-1] if shape else 1
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    if bits.dtype != torch.uint8 or tuple(bits.shape) != (rows, math.ceil(cols / 8)):
        raise InputError(f"packed mask of shape {tuple(bits.shape)} ({bits.dtype}) does not hold a mask of shape {shape}")
    unpacked = np.unpackbits(bits.numpy(), axis=-1, count=cols, bitorder="little")
    return torch.from_numpy(unpacked.view(bool)).reshape(shape)  # 0/1 bytes are valid bools: no copy


def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save keep masks (bool, True = kept) to a safetensors file of packed bits, atomically."""
    shapes = {n: list(m.shape) for n, m in masks.items()}
    with atomic_output(path) as tmp:
        save_file({n: pack_mask(m) for n, m in masks.items()}, str(tmp),
                  metadata={"format": "prunelab-masks", "convention": "set bit = kept", "packing": PACKING,
                            "shapes": json.dumps(shapes, sort_keys=True)})


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load keep masks saved by ``save_masks`` (packed bits), or by earlier versions (one bool per weight).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid masks file, naming it and the tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"mask file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        masks = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"mask file {path} is corrupt or not safetensors ({str(err).splitlines()[0]}); re-create it") from None
    if metadata.get("packing") is None:  # the one-byte-per-weight files of earlier versions
        bad = [n for n, m in masks.items() if m.dtype != torch.bool]
        if bad:
            raise InputError(f"mask file {path} holds non-boolean tensor {bad[0]!r}; masks are bool (True = kept)")
        return masks
    if metadata["packing"] != PACKING:
        raise InputError(f"mask file {path} uses packing {metadata['packing']!r}; this prunelab reads {PACKING!r}: upgrade it")
    try:
        shapes = json.loads(metadata.get("shapes", ""))
    except json.JSONDecodeError:
        raise InputError(f"mask file {path} has no readable 'shapes' metadata; re-create it") from None
    out = {}
    for name, bits in masks.items():
        if name not in shapes:
            raise InputError(f"mask file {path}: tensor {name!r} has no shape in the metadata; re-create it")
        try:
            out[name] = unpack_mask(bits, tuple(shapes[name]))
        except ValueError as err:
            raise InputError(f"mask file {path}: tensor {name!r}: {err}") from None
    return out


def check_masks(masks: dict[str, torch.Tensor], targets, source: str = "masks") -> None:
    """Fail unless `masks` has exactly one mask of the right shape per target (a ``targets.Target`` list).

    Raises:
        ValueError: naming a missing or unexpected target, or a mask whose shape is not its weight's.
    """
    names = {t.name for t in targets}
    missing, extra = sorted(names - set(masks)), sorted(set(masks) - names)
    if missing or extra:
        raise InputError(f"{source} do not match the model's targets: missing {missing[:3]}, unexpected {extra[:3]}; "
                         "were they saved for another architecture or another include/exclude selection?")
    for t in targets:
        if tuple(masks[t.name].shape) != t.shape:
            raise InputError(f"{source}: the mask of {t.name!r} has shape {tuple(masks[t.name].shape)}, the weight {t.shape}")
