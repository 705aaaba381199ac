"""ONNX export: any model prunelab loads (dense, layer-dropped, structurally pruned, compressed) as one ONNX file with
dynamic batch and sequence axes, checked against PyTorch in onnxruntime before it is kept.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``) and returns the model's first
output as ``output``: ``last_hidden_state`` for a base model, ``logits`` for a model with a head. torch's dynamo
exporter is tried first; an architecture it cannot trace (XLNet's relative attention) goes through the TorchScript
exporter. Needs the ``onnx`` extra (``pip install 'prunelab[onnx]'``): onnx, onnxscript, onnxruntime.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..artifact import from_pretrained
from ..io import atomic_output, check_apart
from ..errors import InputError

TOLERANCE = 1e-3  # largest absolute difference to PyTorch accepted (float32 kernels differ in summation order)


class _FirstOutput(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


def _requirements():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise InputError(f"export-onnx needs the onnx extra ({err.name} is missing): pip install 'prunelab[onnx]'") from None
    return onnxruntime


def _inputs(vocab: int, batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row: the attention mask is exercised
    return ids, mask


def export_onnx(model: str, out: str | os.PathLike, *, opset: int | None = None, overwrite: bool = False,
                model_class=None) -> dict:
    """Export `model` to the ONNX file `out` (written atomically, only once onnxruntime reproduces PyTorch's output
    on another batch size and sequence length than the export traced); `model_class` (e.g. ``transformers.AutoModel``:
    the encoder without its head) overrides the class it loads as.

    Returns:
        ``file``, ``bytes``, ``exporter`` (dynamo or torchscript), ``output`` (its name in transformers),
        ``max_abs_diff`` against PyTorch and the checked input shape.

    Raises:
        ValueError: the onnx extra missing, `out` not a ``.onnx`` path or already there without `overwrite`, an export
            that fails or that onnxruntime does not reproduce within ``TOLERANCE``.
    """
    ort = _requirements()
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"--out {str(out)!r} must name a .onnx file")
    from ..artifact import resolve_model_path

    check_apart(out, [resolve_model_path(model)])  # e.g. --out MODEL/model.onnx would write into the input
    if out.exists() and (out.is_dir() or not overwrite):
        raise InputError(f"--out {str(out)!r} exists; choose another path or pass --overwrite")
    net = from_pretrained(model, model_class=model_class).model.eval()
    vocab = int(net.config.vocab_size)
    wrapped = _FirstOutput(net).eval()  # the exporters restore the wrapper's mode, recursively
    example = _inputs(vocab, 2, 16, seed=0)
    with torch.no_grad():
        first = net(input_ids=example[0], attention_mask=example[1])
    output_name = next(iter(first.keys()))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        exporter = _export(wrapped, example, tmp, opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        check = _inputs(vocab, 3, 11, seed=1)
        got = session.run(None, {"input_ids": check[0].numpy(), "attention_mask": check[1].numpy()})[0]
        with torch.no_grad():
            want = wrapped(*check).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diff <= TOLERANCE:
            raise InputError(f"onnxruntime's output differs from PyTorch's by {diff:g} (shape {got.shape} vs "
                             f"{want.shape}); the export of {model!r} is not kept")
    return {"file": str(out), "bytes": out.stat().st_size, "exporter": exporter, "output": output_name,
            "max_abs_diff": diff, "checked_shape": list(check[0].shape)}


def _export(wrapped: torch.nn.Module, example, path: Path, opset: int | None) -> str:
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["output"]}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" per export
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, example, str(path), **names, opset_version=opset, dynamo=True,
                              external_data=False, verbose=False,
                              dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}})
        return "dynamo"
    except Exception:  # torch.export cannot trace every architecture (XLNet): the TorchScript exporter can
        path.unlink(missing_ok=True)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "output": {0: "batch"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, example, str(path), **names, opset_version=opset or 17, dynamo=False,
                              dynamic_axes=axes)
    except Exception as err:
        raise InputError(f"neither of torch's ONNX exporters could export this model: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return "torchscript"
