"""Compressed artifacts: a pruned artifact whose weights are stored in the compressed format (``codec``), and back.

A compressed artifact is a pruned artifact (``artifact``) whose ``model.safetensors`` and ``masks.safetensors`` are
replaced by one ``model.prunelab.safetensors``: each pruned weight as its bitmask and kept values. ``compress``
writes one (lossless, or with the kept values cast to fp16/bf16), ``decompress`` writes the plain artifact back, and
``artifact.from_pretrained`` reads either. Each carries a model card (README.md) saying what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..artifact import (COMPRESSED_FILE, DENSE_FILE, INFO_FILE, checkpoint_shapes, from_pretrained, is_compressed,
                        load_config, read_checkpoint, resolve_model_path)
from ..codec import CODECS, write_compressed
from ..errors import InputError
from ..io import atomic_directory, check_output_dir, read_json, write_json, write_text
from ..masks_io import MASKS_FILE, save_masks
from ..targets import resolve_targets

VALUES = {"lossless": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # --values: lossy casts of the kept values
_NOT_COPIED = (DENSE_FILE, COMPRESSED_FILE, MASKS_FILE, INFO_FILE, "README.md")


def compress(source: str, out: str | os.PathLike, *, codec: str = "zstd", values: str = "lossless",
             overwrite: bool = False, in_place: bool = False) -> dict:
    """Write `source` (a pruned artifact or a model directory with zeros) to `out` as a compressed artifact; `out`
    must be apart from `source` (``io.check_output_dir``), except with `in_place` (`out` is `source`, replaced whole
    and atomically: what ``prunelab prune --compress`` does to the artifact it has just written).

    The masks are the artifact's (``masks.safetensors``) or, without one, its zeros. `values` ``fp16``/``bf16``
    casts the pruned weights (lossy); the largest absolute error it introduced is recorded. Returns
    ``prunelab.json``'s content, with the ``compressed`` sizes.
    """
    if codec not in CODECS:
        raise InputError(f"unknown codec {codec!r}; allowed: {', '.join(CODECS)}")
    if values not in VALUES:
        raise InputError(f"unknown --values {values!r}; allowed: {', '.join(VALUES)}")
    src = Path(resolve_model_path(source))
    if not (src / DENSE_FILE).is_file() and not is_compressed(src):
        raise InputError(f"{source!r} has no single {DENSE_FILE}; compress reads a directory written by save_pretrained")
    if not in_place:  # in place (``prune --compress``) replaces prunelab's own fresh output by design
        check_output_dir(out, overwrite, inputs=[src])
    model, _, masks, info = from_pretrained(str(src))
    targets = resolve_targets(model)
    if masks is None:  # a model with zeros and no masks file: its zeros are its masks
        masks = {t.name: model.get_parameter(t.param_name).detach() != 0 for t in targets}
    if is_compressed(src):  # e.g. a lossless artifact stored again with lossy values
        state = read_checkpoint(src, checkpoint_shapes(model.config, type(model)))[0]
    else:
        with safe_open(str(src / DENSE_FILE), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    by_key = checkpoint_masks(model, targets, masks, state)
    names = {key: t.name for t in targets for key in (t.param_name, t.name) if key in by_key}
    error = _cast_values(state, by_key, VALUES[values], source) if VALUES[values] is not None else 0.0
    info = {**info, "source": info.get("source", source)}
    with atomic_directory(out) as tmp:
        write_compressed(state, by_key, tmp / COMPRESSED_FILE, codec, targets=names)
        for f in src.iterdir():
            if f.is_file() and f.name not in _NOT_COPIED:
                shutil.copy2(f, tmp / f.name)
        dense_bytes = info.get("compressed", {}).get("dense_bytes") or (src / DENSE_FILE).stat().st_size
        sizes = {"dense_bytes": dense_bytes, "compressed_bytes": (tmp / COMPRESSED_FILE).stat().st_size,
                 "codec": codec, "sparse_tensors": len(by_key), "values": values, "max_abs_error": error}
        info["compressed"] = sizes
        write_json(tmp / INFO_FILE, info)
        write_text(tmp / "README.md", model_card(source, info))
    return info


def decompress(source: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Write the compressed artifact `source` to `out` as a plain one (``model.safetensors`` and masks), which plain
    ``transformers`` loads. Returns its ``prunelab.json``."""
    src = Path(source)
    if not is_compressed(src):
        raise InputError(f"{source!s} is not a compressed artifact (no {COMPRESSED_FILE}); pass the directory of "
                         "`prunelab compress`")
    if not (src / "config.json").is_file():  # a plain copy without it loads nowhere; the config also bounds decoding
        raise InputError(f"{source!s} has no config.json; decompress writes a copy that transformers loads, which "
                         f"needs it: put the model's config.json beside {COMPRESSED_FILE}")
    check_output_dir(out, overwrite, inputs=[src])
    tensors, masks = read_checkpoint(src, checkpoint_shapes(load_config(str(src))[1]))
    info = read_json(src / INFO_FILE, "artifact info") if (src / INFO_FILE).is_file() else {}
    info.pop("compressed", None)
    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / DENSE_FILE), metadata={"format": "pt"})
        save_masks(masks, tmp / MASKS_FILE)
        for f in src.iterdir():
            if f.is_file() and f.name not in _NOT_COPIED:
                shutil.copy2(f, tmp / f.name)
        write_json(tmp / INFO_FILE, info)
    return info


def checkpoint_masks(model, targets, masks: dict[str, torch.Tensor], keys) -> dict[str, torch.Tensor]:
    """`masks` (keyed by target name) keyed by the checkpoint `keys` their weights are saved under."""
    out = {}
    for t in targets:
        if t.name in masks:
            key = t.param_name if t.param_name in keys else t.name
            if key not in keys:
                raise InputError(f"the checkpoint holds no tensor for target {t.name!r}; re-save the model with save_pretrained")
            out[key] = masks[t.name]
    return out


def _cast_values(state: dict[str, torch.Tensor], sparse: dict, dtype: torch.dtype, source: str) -> float:
    """Cast the sparse tensors of `state` to `dtype` in place; the largest absolute error it introduced."""
    error = 0.0
    for key in sparse:
        cast = state[key].to(dtype)
        if not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(state[key]).all()):
            raise InputError(f"{source!r}: tensor {key!r} exceeds the range of {dtype}; use --values bf16 or lossless")
        error = max(error, float((cast.to(state[key].dtype) - state[key]).abs().max()) if cast.numel() else 0.0)
        state[key] = cast
    return error


def model_card(source: str, info: dict) -> str:
    """The artifact's README.md (the Hub's convention): origin, pruning, sparsity per kind, sizes, how to load."""
    size = info["compressed"]
    report = info.get("report", {})
    rows = [f"| {kind} | {v['sparsity']:.1%} |" for kind, v in report.get("by_kind", {}).items()]
    overall = report.get("overall", {}).get("sparsity")
    values = size.get("values", "lossless")
    fidelity = ("bit-identical tensors, and the masks" if values == "lossless" else
                f"lossy: the pruned weights' kept values are stored as {values}, within {size['max_abs_error']:.3g} "
                "(the largest absolute error) of the source's; every other tensor and the masks exact")
    return "\n".join([
        "---", "library_name: transformers", "tags: [prunelab, pruned, sparse]", "---", "",
        f"# Pruned from `{info.get('source', source)}`", "",
        f"Pruned with prunelab {info.get('versions', {}).get('prunelab', '')}: "
        + (json.dumps(info["config"], sort_keys=True) if info.get("config") else "its zeros are its masks") + ".", "",
        f"Overall sparsity of the pruned weights: {overall:.1%}." if overall is not None else "", "",
        "| kind | sparsity |", "|---|---:|", *rows, "",
        f"Stored as {COMPRESSED_FILE} (codec {size['codec']}): {size['compressed_bytes']:,} bytes, "
        f"{size['compressed_bytes'] / size['dense_bytes']:.1%} of the dense {DENSE_FILE} ({size['dense_bytes']:,} bytes).", "",
        f"Load it with prunelab ({fidelity}):", "", "```python", "import prunelab",
        "model, tokenizer, masks, info = prunelab.from_pretrained(\"THIS_DIRECTORY\")", "```", "",
        "or write a plain copy that `transformers.AutoModel.from_pretrained` loads: "
        "`prunelab decompress THIS_DIRECTORY --out PLAIN`.", ""])
