"""Sparse execution: run each pruned linear layer with a library sparse kernel where a measurement says it is faster.

``sparse_execution(model, example_inputs)`` runs the model once on `example_inputs` to learn each target linear
layer's input shape, then times, on that shape, the dense layer against the sparse layouts torch offers for it:
CSR, COO and, for block-sparse weights, BSR (``torch.sparse.mm``), and on CUDA 2:4 semi-structured
(``torch.sparse.to_sparse_semi_structured``) where the mask is 2:4 and the GPU supports it. A layer switches only
when its best sparse layout beats the dense one by more than the noise floor (two timings of the dense layer
against each other); otherwise it stays dense, and the report says so. No kernel is written here.

The model is changed in place (its chosen ``nn.Linear`` modules become ``SparseLinear``) and returned; the report,
one dict per target linear layer, is ``model.prunelab_execution``. A model with sparse layers keeps its state-dict keys
and values: ``state_dict``/``save_pretrained`` write each sparse weight dense under its ``nn.Linear`` name (plain
``transformers`` loads the checkpoint), ``load_state_dict`` re-sparsifies a loaded weight in the layer's layout, and
``.to(dtype or device)``, ``.half()``, ``.double()`` and ``copy.deepcopy`` carry the sparse weights along.
``dense_execution(model)`` turns every ``SparseLinear`` back into an ``nn.Linear``. The sparse weights are not in
``parameters()`` (inference kernels, not trainable): train a model before ``sparse_execution`` or after
``dense_execution``.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings

import torch
from torch import nn

from ..targets import resolve_targets
from ..errors import InputError

logger = logging.getLogger(__name__)

MODES = ("auto", "dense", "csr", "coo", "bsr")
BSR_BLOCK = 32
MIN_SPARSITY = 0.3  # below this no library kernel has a chance; the layer is not even timed
NOISE_MARGIN = 0.03  # the least margin a sparse layout must win by, whatever the measured noise


class SparseLinear(nn.Module):
    """``nn.Linear`` with its weight in a sparse layout: ``y = x W^T + b`` as ``(W x^T)^T + b`` by ``torch.sparse.mm``."""

    def __init__(self, linear: nn.Linear, layout: str):
        super().__init__()
        self.in_features, self.out_features, self.layout = linear.in_features, linear.out_features, layout
        self.weight = sparse_weight(linear.weight.detach(), layout)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.layout == "semi_structured":
            y = torch.mm(flat, self.weight.t())
        else:
            y = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # The sparse weight is a plain attribute, not a parameter, so torch would leave it out: write it dense, and
        # first, as nn.Linear does, so the keys, their order and their values are the dense model's.
        destination[prefix + "weight"] = self.weight.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
        else:
            dense = state_dict[key].detach()
            if tuple(dense.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(dense.shape)} from "
                                  f"checkpoint, the shape in current model is "
                                  f"{(self.out_features, self.in_features)}.")
            elif self.layout == "semi_structured" and not is_two_four(dense != 0):
                # to_sparse_semi_structured would keep 2 of each 4 weights whatever they are: refuse, never lose any
                error_msgs.append(f"{key} is not 2:4 sparse, so the 2:4 semi-structured layer cannot hold it; call "
                                  "prunelab.dense_execution(model) before loading a weight of another pattern.")
            else:
                self.weight = sparse_weight(dense.to(self.weight.device, self.weight.dtype), self.layout)
        rest = {k: v for k, v in state_dict.items() if k != key}  # torch would call the weight an unexpected key
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _apply(self, fn, recurse: bool = True):
        """``.to``, ``.double``, ``.half``, ``.cuda`` and the like: torch applies `fn` to parameters and buffers only,
        so the sparse weight is densified, given `fn` and re-sparsified in its layout; the bias stays a parameter."""
        # converted before anything changes, so a layout that cannot hold the result leaves this layer as it was
        try:
            weight = sparse_weight(fn(self.weight.to_dense()), self.layout)
        except (RuntimeError, NotImplementedError) as err:  # e.g. 2:4 semi-structured moved off CUDA or to float32
            raise InputError(f"the {self.layout} layer {self.extra_repr()} cannot hold its converted weight ({err}); "
                             "call prunelab.dense_execution(model) before converting it, then sparse_execution "
                             "again") from err
        super()._apply(fn, recurse)
        self.weight = weight
        return self

    def __deepcopy__(self, memo: dict) -> SparseLinear:
        """A copy with its own weight: ``copy.deepcopy`` cannot copy CSR or BSR tensors (it reaches for their
        storage), ``clone`` can. The noise-floor copy of ``prunelab speed`` is one."""
        copied = self.__class__.__new__(self.__class__)
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "weight"}, memo))
        copied.__dict__["weight"] = self.weight.clone()
        return copied


def sparse_weight(weight: torch.Tensor, layout: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        if layout == "csr":
            return weight.to_sparse_csr()
        if layout == "coo":
            return weight.to_sparse().coalesce()
        if layout == "bsr":
            return weight.to_sparse_bsr((BSR_BLOCK, BSR_BLOCK))
    if layout == "semi_structured":
        return torch.sparse.to_sparse_semi_structured(weight)
    raise InputError(f"unknown sparse layout {layout!r}")


def candidate_layouts(weight: torch.Tensor) -> list[str]:
    """The sparse layouts a library kernel offers for `weight` on its device: CSR and COO; BSR where at least half
    of its 32 x 32 blocks are all zero (otherwise its blocks carry the zeros along)."""
    layouts = ["csr", "coo"]
    rows, cols = weight.shape
    if rows % BSR_BLOCK == 0 and cols % BSR_BLOCK == 0:
        blocks = (weight != 0).reshape(rows // BSR_BLOCK, BSR_BLOCK, cols // BSR_BLOCK, BSR_BLOCK).any(3).any(1)
        if float(blocks.float().mean()) <= 0.5:
            layouts.append("bsr")
    if weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16) and is_two_four(weight != 0):
        major, _ = torch.cuda.get_device_capability(weight.device)
        if major >= 8:
            layouts.append("semi_structured")
    return layouts


def is_two_four(mask: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along the input dimension keeps at most 2."""
    if mask.shape[-1] % 4:
        return False
    return bool((mask.reshape(*mask.shape[:-1], -1, 4).sum(-1) <= 2).all())


def _timings(fn, repeats: int, sync: bool) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, in order (the caller takes the median)."""
    out = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


@torch.no_grad()
def time_layer(linear: nn.Linear, shape: tuple[int, ...], layouts: list[str], repeats: int = 7,
               drop_hopeless: bool = True) -> dict[str, float]:
    """Median seconds of `linear` on an input of `shape`: dense (twice: the noise floor) and each of `layouts`,
    interleaved, after a warm-up; a layout whose first timing is over twice the dense one is dropped unrepeated."""
    x = torch.randn(shape, device=linear.weight.device, dtype=linear.weight.dtype)
    sync = linear.weight.is_cuda
    linear(x)  # warm-up
    variants = {"dense": linear, "dense_again": linear}
    first = {name: _timings(lambda: linear(x), 1, sync)[0] for name in variants}
    for layout in layouts:
        try:
            candidate = SparseLinear(linear, layout)
            candidate(x)  # its warm-up
        except (RuntimeError, NotImplementedError) as err:  # a layout this build or device does not support
            logger.info("layout %s unavailable for %s: %s", layout, tuple(linear.weight.shape), err)
            continue
        first[layout] = _timings(lambda: candidate(x), 1, sync)[0]
        if not drop_hopeless or first[layout] <= 2.0 * min(first["dense"], first["dense_again"]):
            variants[layout] = candidate  # else hopeless: not worth the repeats
    times: dict[str, list[float]] = {name: [first[name]] for name in variants}
    for _ in range(repeats - 1):
        for name, fn in variants.items():
            times[name] += _timings(lambda: fn(x), 1, sync)
    return {name: statistics.median(t) for name, t in times.items()}


def sparse_execution(model: nn.Module, example_inputs: dict, mode: str = "auto", repeats: int = 7, *,
                     timer=time_layer) -> nn.Module:
    """Give each pruned target linear layer of `model` the fastest execution measured on `example_inputs`'s shapes.

    Args:
        model: A model whose pruned targets hold zeros (any head class); changed in place.
        example_inputs: The model's forward inputs (e.g. ``input_ids``, ``attention_mask``) at the shapes to serve.
        mode: ``auto`` (measure, switch only where faster), ``dense`` (report only), or ``csr``/``coo``/``bsr``
            (force that layout on every pruned target linear layer).
        repeats: Timings per variant and layer (medians are compared).
        timer: Called as ``timer(linear, input_shape, layouts, repeats, drop_hopeless=...)``; returns median seconds
            by variant (``dense``, ``dense_again`` and each layout it could run), like ``time_layer``, the default.
            Tests pass fixed medians so the choice does not depend on the machine's noise.

    Returns:
        `model`, with ``model.prunelab_execution``: one dict per target linear layer (name, shape, sparsity,
        choice, median dense and chosen milliseconds, their ratio, and why).
    """
    if mode not in MODES:
        raise InputError(f"unknown sparse execution mode {mode!r}; allowed: {', '.join(MODES)}")
    linears = {}
    for t in resolve_targets(model):
        module_name = t.param_name.rsplit(".", 1)[0]
        module = model.get_submodule(module_name)
        if isinstance(module, nn.Linear) and t.param_name.endswith(".weight"):
            linears[module_name] = module
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args) -> None:  # returns None: the inputs pass unchanged
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for h in hooks:
            h.remove()
    report = []
    for name, linear in linears.items():
        weight = linear.weight.detach()
        sparsity = 1.0 - float(weight.count_nonzero()) / weight.numel()
        row = {"name": name, "shape": list(weight.shape), "input": list(shapes.get(name, ())), "sparsity": sparsity,
               "choice": "dense", "dense_ms": None, "chosen_ms": None, "ratio": 1.0}
        if name not in shapes:
            row["why"] = "not used by the forward pass"
        elif mode == "dense":
            row["why"] = "mode dense"
        elif sparsity < MIN_SPARSITY and mode == "auto":
            row["why"] = f"sparsity below {MIN_SPARSITY:.0%}"
        else:
            layouts = [mode] if mode in ("csr", "coo", "bsr") else candidate_layouts(weight)
            medians = timer(linear, shapes[name], layouts, repeats, drop_hopeless=mode == "auto")
            noise = abs(medians["dense_again"] / medians["dense"] - 1.0)
            sparse = {k: v for k, v in medians.items() if k not in ("dense", "dense_again")}
            best = min(sparse, key=sparse.get) if sparse else None
            row["dense_ms"] = medians["dense"] * 1e3
            wins = best is not None and sparse[best] < medians["dense"] * (1.0 - max(noise, NOISE_MARGIN))
            if best is not None and (wins or mode != "auto"):
                row.update(choice=best, chosen_ms=sparse[best] * 1e3, ratio=sparse[best] / medians["dense"],
                           why="forced" if mode != "auto" else f"{best} faster beyond the noise floor ({noise:.1%})")
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, SparseLinear(linear, best))
            else:
                row.update(chosen_ms=medians["dense"] * 1e3,
                           why=("no sparse layout available" if best is None else
                                f"best sparse layout {best} at {sparse[best] / medians['dense']:.2f}x dense: "
                                f"not faster beyond the noise floor ({max(noise, NOISE_MARGIN):.1%})"))
        report.append(row)
        logger.info("%s: %s (%s)", name, row["choice"], row.get("why"))
    model.prunelab_execution = report
    return model


def dense_execution(model: nn.Module) -> nn.Module:
    """Undo ``sparse_execution``: every ``SparseLinear`` of `model` becomes an ``nn.Linear`` again, with its weight
    dense (a new parameter) and the same bias parameter; ``model.prunelab_execution`` is removed.

    Args:
        model: A model given ``sparse_execution`` (or any model: one without ``SparseLinear`` is left as it is);
            changed in place.

    Returns:
        `model`, a plain ``transformers`` model again (trainable, and its ``parameters()`` hold every weight).
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, SparseLinear) or not name:
            continue
        weight = module.weight.to_dense()
        linear = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")  # no init to overwrite
        linear.weight = nn.Parameter(weight)
        linear.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    if "prunelab_execution" in model.__dict__:
        del model.prunelab_execution
    return model
