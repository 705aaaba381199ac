"""The compressed checkpoint format: each pruned weight as a bitmask plus its kept values, entropy-coded, bit-exact.

A compressed file (a safetensors file) holds, for every tensor ``K`` of a checkpoint (tied weights once, as
``save_pretrained`` stores them):

* a pruned weight (a key the caller's masks cover): ``K::bitmask`` and ``K::values``. Decoded, the bitmask is
  the keep mask in the sparse-bitmask layout of ``masks_io`` (uint8 ``[rows, ceil(cols/8)]``, column ``j`` in bit
  ``j % 8`` of byte ``j // 8``); the values are the kept weights in row-major order, in the weight's dtype;
* any other tensor: ``K`` as it is.

Codec ``none`` stores the bitmask and the values as plain tensors (uint8, and the weight's dtype). Codec ``zstd``
stores each as one zstd frame (a uint8 tensor) of a transform: the bitmask's bytes as they are; the values split
into planes, the exponent (one byte per value) and then the sign with the mantissa (little-endian bytes, lowest
first), so that the exponent plane, whose entropy is a few bits, compresses and the rest is not disturbed.

The file's metadata: ``format = prunelab-compressed``, ``version = 2`` and ``tensors``, a JSON object giving each
``K`` its ``shape``, ``dtype``, ``layout`` (``sparse`` or ``dense``), ``nnz`` (kept values), ``codec`` and ``crc32``,
the CRC-32 of its decoded bytes (a sparse tensor: the decoded bitmask's bytes followed by the values' bytes,
row-major, little-endian; a dense one: its bytes), which decoding verifies, and optionally ``target``, a name the
caller gives the tensor. Version 1 (a SHA-256 of the dense tensor's bytes, ``sha256``; the same parts) still reads.
Decoding runs one tensor per thread: zstd, numpy, zlib and torch release the GIL.

The file is untrusted input: before anything is decoded, every entry is checked against the stored parts
(``check_entry``: sizes the shape implies, zstd frames' declared content sizes) and, where the caller knows the
model, against the shapes it gives (``read_compressed(expected_shapes=...)``), so that decoding allocates no more
than those shapes' bytes however small the file is. This module knows nothing of artifacts, directories or models:
it encodes and decodes tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io import atomic_output
from .masks_io import pack_mask, unpack_mask
from .errors import InputError

FORMAT, VERSION, READS = "prunelab-compressed", "2", ("1", "2")
CODECS = ("none", "zstd")
# dtype -> (exponent bits, mantissa bits) of the floating-point formats the transform splits
FLOATS = {torch.float32: (8, 23), torch.float16: (5, 10), torch.bfloat16: (8, 7)}
_INTS = {torch.float32: (np.uint32, torch.int32), torch.float16: (np.uint16, torch.int16),
         torch.bfloat16: (np.uint16, torch.int16)}
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                                        torch.bool)}
ZSTD_LEVEL = 9


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise InputError("codec zstd needs the zstandard package: pip install zstandard (or --codec none)") from None
    return zstandard


def _view(tensor: torch.Tensor) -> memoryview | bytes:
    """A tensor's bytes (row-major, its own dtype) without a copy where it is contiguous on the CPU."""
    t = tensor.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""


def crc32(*tensors: torch.Tensor) -> str:
    """CRC-32 of the tensors' bytes, one after the other, as 8 hex digits."""
    value = 0
    for t in tensors:
        value = zlib.crc32(_view(t), value)
    return f"{value:08x}"


def sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (the checksum of format version 1)."""
    return hashlib.sha256(_view(tensor)).hexdigest()


# -- the value transform ----------------------------------------------------------------------------


def split_planes(values: torch.Tensor) -> bytes:
    """Floating-point `values` (1-D) as planes: the exponent byte of every value, then the sign and mantissa
    bytes (lowest first). Other dtypes: their bytes as they are."""
    if values.dtype not in FLOATS:
        return bytes(_view(values))
    exp_bits, mant_bits = FLOATS[values.dtype]
    uint, _ = _INTS[values.dtype]
    bits = values.contiguous().view(_INTS[values.dtype][1]).numpy().view(uint).astype(np.uint64)
    exponent = ((bits >> mant_bits) & ((1 << exp_bits) - 1)).astype(np.uint8)
    sign_mantissa = ((bits >> (exp_bits + mant_bits)) << mant_bits) | (bits & ((1 << mant_bits) - 1))
    width = math.ceil((1 + mant_bits) / 8)
    planes = [exponent] + [((sign_mantissa >> (8 * i)) & 0xFF).astype(np.uint8) for i in range(width)]
    return b"".join(p.tobytes() for p in planes)


def join_planes(data: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    """Inverse of ``split_planes``: `count` values of `dtype` from their planes."""
    if len(data) != plane_bytes(dtype, count):
        raise InputError(f"{len(data)} bytes of value planes for {count} values of {dtype}")
    if dtype not in FLOATS:
        return torch.frombuffer(bytearray(data), dtype=dtype) if count else torch.empty(0, dtype=dtype)
    exp_bits, mant_bits = FLOATS[dtype]
    uint, _ = _INTS[dtype]
    width = math.ceil((1 + mant_bits) / 8)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(1 + width, count)
    bits = planes[1].astype(uint)  # in the value's own width: sign and mantissa, then the exponent in between
    for i in range(1, width):
        bits |= planes[1 + i].astype(uint) << uint(8 * i)
    sign = bits >> uint(mant_bits)
    bits &= uint((1 << mant_bits) - 1)
    bits |= planes[0].astype(uint) << uint(mant_bits)
    bits |= sign << uint(exp_bits + mant_bits)
    signed_np = {np.uint32: np.int32, np.uint16: np.int16}[uint]
    return torch.from_numpy(bits.view(signed_np)).view(dtype)


def plane_bytes(dtype: torch.dtype, count: int) -> int:
    """The length of ``split_planes`` of `count` values of `dtype`."""
    if dtype in FLOATS:
        return count * (1 + math.ceil((1 + FLOATS[dtype][1]) / 8))
    return count * dtype.itemsize


# -- one tensor -------------------------------------------------------------------------------------


def encode(key: str, weight: torch.Tensor, mask: torch.Tensor | None, codec: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored tensors of checkpoint tensor `key` and its metadata entry; `mask` (bool, True = kept) makes it sparse.

    Raises:
        ValueError: a weight not zero where its mask prunes (the masks and weights disagree), or an unknown codec.
    """
    if codec not in CODECS:
        raise InputError(f"unknown codec {codec!r}; allowed: {', '.join(CODECS)}")
    weight = weight.detach().to("cpu").contiguous()
    entry = {"shape": list(weight.shape), "dtype": str(weight.dtype).removeprefix("torch."),
             "layout": "dense" if mask is None else "sparse", "codec": codec}
    if mask is None:
        entry["crc32"] = crc32(weight)
        return {key: weight.clone()}, entry  # a copy: tied tensors of a state dict would share storage in the file
    mask = mask.to("cpu", torch.bool)
    if tuple(mask.shape) != tuple(weight.shape):
        raise InputError(f"tensor {key!r}: mask of shape {tuple(mask.shape)} for a weight of shape {tuple(weight.shape)}")
    if bool((weight[~mask] != 0).any()):
        raise InputError(f"tensor {key!r} is not zero where its mask prunes; re-save the model from its pruner")
    negative_zeros = int(torch.signbit(weight[~mask]).sum()) if weight.is_floating_point() else 0
    if negative_zeros:  # pruned by an older prunelab (-w * 0 = -0.0): stored, like decoded, as +0.0
        weight = weight.add(0.0)
        entry["negative_zeros_made_positive"] = negative_zeros
    values = weight[mask]  # row-major order of the kept positions
    bitmask = pack_mask(mask)
    entry.update(nnz=int(values.numel()), crc32=crc32(bitmask, values))
    if codec == "none":
        return {f"{key}::bitmask": bitmask, f"{key}::values": values}, entry
    zstd = _zstd().ZstdCompressor(level=ZSTD_LEVEL)
    frames = {f"{key}::bitmask": zstd.compress(_view(bitmask)), f"{key}::values": zstd.compress(split_planes(values))}
    return {k: torch.frombuffer(bytearray(v), dtype=torch.uint8) for k, v in frames.items()}, entry


def check_entry(key: str, entry, stored: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], torch.dtype, int, int]:
    """The shape and dtype of tensor `key` from its metadata `entry`, and the bytes its decoded bitmask and values
    take (``0, 0`` for a dense tensor), checked against the stored parts without decoding them.

    What it checks bounds every allocation of ``decode`` by the shape: ``nnz`` at most the shape's elements; a
    plain bitmask of exactly the bytes the shape implies; a zstd frame declaring exactly the bytes the shape and
    ``nnz`` imply (a frame declaring none is decoded into a buffer of that size). It reads frame headers only.

    Raises:
        ValueError: a malformed entry, or a part whose size disagrees with it.
        KeyError: a missing field or part.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"its metadata entry is a {type(entry).__name__}, not a JSON object; the file is damaged")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers; the file is damaged or not prunelab's")
    shape, dtype = tuple(shape), entry["dtype"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}; the file is damaged or not prunelab's")
    dtype = _DTYPES[dtype]
    if entry["layout"] not in ("dense", "sparse") or entry["codec"] not in CODECS:
        raise ValueError(f"layout {entry['layout']!r} with codec {entry['codec']!r}: allowed are dense or sparse, with "
                         f"{', '.join(CODECS)}; the file is damaged or not prunelab's")
    if entry["layout"] == "dense":
        if tuple(stored[key].shape) != shape or stored[key].dtype != dtype:
            raise ValueError(f"stored as {stored[key].dtype} {tuple(stored[key].shape)} but its entry gives {dtype} "
                             f"{shape}; the file is damaged")
        return shape, dtype, 0, 0
    nnz, numel = entry["nnz"], math.prod(shape)
    if type(nnz) is not int or not 0 <= nnz <= numel:
        raise ValueError(f"nnz {nnz!r} is not an integer in 0..{numel}, the elements of shape {shape}; the file is damaged")
    cols = shape[-1] if shape else 1
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    sizes = {"bitmask": rows * math.ceil(cols / 8), "values": plane_bytes(dtype, nnz)}
    for part, size in sizes.items():
        stored_part = stored[f"{key}::{part}"]
        if entry["codec"] == "none":  # the values are in memory already; the popcount check counts them
            if part == "bitmask" and (stored_part.dtype != torch.uint8 or stored_part.numel() != size):
                raise ValueError(f"its bitmask is {stored_part.dtype} {tuple(stored_part.shape)} where shape {shape} "
                                 f"needs {size} bytes of uint8; the file is damaged")
            continue
        if stored_part.dtype != torch.uint8 or stored_part.dim() != 1:
            raise ValueError(f"its {part} is {stored_part.dtype} {tuple(stored_part.shape)}, not a zstd frame (uint8, "
                             "1-D); the file is damaged")
        declared = _zstd().frame_content_size(_view(stored_part))
        if declared != -1 and declared != size:  # -1: no size declared; decode caps the output at `size`
            raise ValueError(f"its {part} frame declares {declared} bytes but shape {shape} and nnz {nnz} give "
                             f"{size}; the file is damaged or not prunelab's")
    return shape, dtype, sizes["bitmask"], sizes["values"]


@contextmanager
def _named(where: str, damaged: InputError | None = None):
    """Any error inside as one InputError naming `where` (file and tensor); `damaged` already names it."""
    try:
        yield
    except KeyError as err:
        raise InputError(f"{where}: part {err.args[0]!r} is missing; the file is truncated or not prunelab's") from None
    except ValueError as err:
        raise (err if err is damaged else InputError(f"{where}: {err}")) from None
    except Exception as err:  # zstd and numpy raise their own types on damaged frames
        raise InputError(f"{where}: cannot decode ({type(err).__name__}: {err})") from None


def _decompress(zstd, frame: torch.Tensor, size: int) -> bytes:
    """The content of zstd `frame`, which must be `size` bytes; never more are allocated."""
    data = zstd.decompress(_view(frame), max_output_size=max(size, 1))  # the cap applies where no size is declared
    if len(data) != size:
        raise ValueError(f"a frame holds {len(data)} bytes where {size} are expected; the file is damaged")
    return data


def decode(key: str, stored: dict[str, torch.Tensor], entry: dict, source: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense tensor `key` from its stored tensors and metadata entry, checked against its checksum, and its keep
    mask (``None`` for a dense tensor). The entry is checked first (``check_entry``): no allocation exceeds its shape.

    Raises:
        ValueError: a missing part, a malformed entry, a bitmask whose popcount is not the number of values, a
            failed checksum, naming `source` and the tensor.
    """
    where = f"{source}: tensor {key!r}"
    damaged = InputError(f"{where}: the checksum of the decoded tensor fails; the file is damaged")
    with _named(where, damaged):
        shape, dtype, mask_bytes, value_bytes = check_entry(key, entry, stored)
        mask = None
        if entry["layout"] == "dense":
            dense = stored[key]
            if "crc32" in entry and crc32(dense) != entry["crc32"]:
                raise damaged
        else:
            bitmask, values = stored[f"{key}::bitmask"], stored[f"{key}::values"]
            cols = shape[-1] if shape else 1
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            if entry["codec"] == "zstd":
                zstd = _zstd().ZstdDecompressor()
                bitmask = torch.frombuffer(bytearray(_decompress(zstd, bitmask, mask_bytes)), dtype=torch.uint8) \
                    if mask_bytes else torch.empty(0, dtype=torch.uint8)
                bitmask = bitmask.reshape(rows, math.ceil(cols / 8))
                values = join_planes(_decompress(zstd, values, value_bytes), dtype, entry["nnz"])
            if "crc32" in entry and crc32(bitmask, values) != entry["crc32"]:
                raise damaged
            mask = unpack_mask(bitmask, shape)
            kept = int(np.bitwise_count(bitmask.numpy()).sum())  # popcount of the packed bytes (padding bits are 0)
            if kept != values.numel() or kept != entry["nnz"]:
                raise InputError(f"the bitmask keeps {kept} weights but {values.numel()} values are stored and its "
                                 f"entry gives nnz {entry['nnz']}")
            dense = torch.zeros(shape, dtype=dtype).masked_scatter_(mask, values.to(dtype))
        if "crc32" not in entry and sha256(dense) != entry["sha256"]:  # format version 1
            raise damaged
    if tuple(dense.shape) != shape:
        raise damaged
    return dense, mask


# -- whole files ------------------------------------------------------------------------------------


def write_compressed(state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], path: str | os.PathLike,
                     codec: str = "zstd", targets: dict[str, str] | None = None) -> dict:
    """Write checkpoint tensors `state_dict` (key -> tensor), the keys in `masks` as sparse, to `path` atomically;
    `targets` (checkpoint key -> target name) is recorded in the sparse tensors' entries.

    Returns:
        The metadata's ``tensors`` object.
    """
    stored, entries = {}, {}
    for key, weight in state_dict.items():
        parts, entries[key] = encode(key, weight, masks.get(key), codec)
        if targets and key in targets:
            entries[key]["target"] = targets[key]
        stored.update(parts)
    with atomic_output(path) as tmp:
        save_file(stored, str(tmp), metadata={"format": FORMAT, "version": VERSION, "tensors": json.dumps(entries)})
    return entries


def _numel(entry) -> int:
    try:
        return math.prod(entry["shape"])
    except Exception:  # a damaged entry: decode names it
        return 0


def read_compressed(path: str | os.PathLike, expected_shapes: Mapping[str, tuple[int, ...]] | None = None, *,
                    with_entries: bool = False) -> tuple:
    """The dense checkpoint tensors and the keep masks (bool, keyed by checkpoint key) of a compressed file, and with
    `with_entries` its metadata's entries too (key -> shape, dtype, layout, ..., and ``target`` where written).

    Args:
        path: The file.
        expected_shapes: Checkpoint key -> the shape the model's config.json gives it, where the caller knows the
            model. Every entry is checked before anything is decoded: a tensor of another shape, or a sparse one
            the model has no key for, is refused, so decoding allocates no more than the model's tensors take.

    Raises:
        ValueError: not a prunelab compressed file, an unknown version, a tensor the model does not have (in that
            shape), or a damaged tensor, naming file and tensor.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path} is truncated or not safetensors ({str(err).splitlines()[0]})") from None
    if metadata.get("format") != FORMAT:
        raise InputError(f"{path} is not a prunelab compressed checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") not in READS:
        raise InputError(f"{path} has format version {metadata.get('version')!r}; this prunelab reads versions "
                         f"{', '.join(READS)}: upgrade prunelab")
    try:
        entries = json.loads(metadata["tensors"])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"{path} has no readable tensor table; the file is damaged") from None
    if not isinstance(entries, dict):
        raise InputError(f"{path} has a tensor table that is a {type(entries).__name__}, not a JSON object; the file is damaged")
    for key, entry in entries.items():  # every entry before anything is decoded (decode checks its own again: cheap)
        with _named(f"{path}: tensor {key!r}"):
            shape = check_entry(key, entry, stored)[0]
        if expected_shapes is None:
            continue
        expected = expected_shapes.get(key)
        if expected is None and entry["layout"] == "sparse":
            raise InputError(f"{path}: tensor {key!r} is not a tensor of the model its config.json describes; the "
                             "config and the weights belong to different models")
        if expected is not None and tuple(expected) != shape:
            raise InputError(f"{path}: tensor {key!r} has shape {shape} but its config.json gives {tuple(expected)}; "
                             "the config and the weights belong to different models")
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # largest first: the threads end together
        keys = sorted(entries, key=lambda k: -_numel(entries[k]))
        decoded = dict(zip(keys, pool.map(lambda k: decode(k, stored, entries[k], str(path)), keys)))
    tensors = {key: decoded[key][0] for key in entries}
    masks = {key: decoded[key][1] for key in entries if decoded[key][1] is not None}
    return (tensors, masks, entries) if with_entries else (tensors, masks)
