"""Masks on disk: packed bits in the sparse-bitmask layout, round trips, the old one-byte format, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from prunelab.masks_io import load_masks, pack_mask, save_masks, unpack_mask


@pytest.mark.parametrize("shape", [(1,), (13,), (3, 13), (64, 37), (32, 4, 8), (5, 1), (2, 3, 17)])
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_round_trip_is_exact(tmp_path, shape, density):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < density
    save_masks({"w": mask}, tmp_path / "m.safetensors")
    loaded = load_masks(tmp_path / "m.safetensors")
    assert loaded["w"].dtype == torch.bool and torch.equal(loaded["w"], mask)


def test_bit_layout_is_little_endian_along_the_last_dimension():
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, 0] = mask[0, 9] = mask[1, 7] = True
    bits = pack_mask(mask)
    assert bits.dtype == torch.uint8 and tuple(bits.shape) == (2, 2)  # [rows, ceil(cols / 8)]
    assert bits.tolist() == [[0b00000001, 0b00000010], [0b10000000, 0]]  # column j: bit j % 8 of byte j // 8
    assert torch.equal(unpack_mask(bits, (2, 11)), mask)


def test_packed_file_is_an_eighth_of_one_byte_per_weight(tmp_path):
    masks = {f"w{i}": torch.rand(384, 1536) > 0.5 for i in range(4)}
    save_file({n: m for n, m in masks.items()}, str(tmp_path / "old.safetensors"))
    save_masks(masks, tmp_path / "new.safetensors")
    old, new = (tmp_path / "old.safetensors").stat().st_size, (tmp_path / "new.safetensors").stat().st_size
    assert new <= old / 8 + 1024


def test_one_byte_per_weight_files_of_earlier_versions_still_load(tmp_path):
    mask = torch.rand(6, 10) > 0.3
    save_file({"w": mask}, str(tmp_path / "old.safetensors"), metadata={"format": "prunelab-masks", "convention": "True = kept"})
    assert torch.equal(load_masks(tmp_path / "old.safetensors")["w"], mask)


def test_a_packed_tensor_that_does_not_fit_its_shape_names_file_and_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": pack_mask(torch.ones(4, 9, dtype=torch.bool))}, str(path),
              metadata={"format": "prunelab-masks", "packing": "bits-little", "shapes": json.dumps({"w": [4, 17]})})
    with pytest.raises(ValueError, match=r"m.safetensors: tensor 'w': packed mask of shape \(4, 2\)"):
        load_masks(path)
    save_file({"w": pack_mask(torch.ones(4, 9, dtype=torch.bool))}, str(path), metadata={"packing": "zip"})
    with pytest.raises(ValueError, match="uses packing 'zip'"):
        load_masks(path)
