"""One-shot pruning layer by layer over calibration data: what Wanda and SparseGPT share.

The encoder's layers are pruned in order. Layer ``i`` sees the calibration inputs as the already-pruned layers
``0..i-1`` transform them (SparseGPT's sequential scheme, which Wanda's reference code follows too): the inputs of
layer 0 are captured once (a forward pre-hook that stops the forward pass), then each layer is run on its inputs
with hooks on its linear targets that gather a statistic of their inputs (``Gather``), pruned by the caller, and
run again to give the next layer its inputs. Padding tokens never enter a statistic: a hook keeps only the rows of
its input whose token the batch's attention mask keeps.

Targets that are not a linear layer inside an encoder layer (embeddings, the pooler, XLNet's 3-D attention
parameters) have no calibrated criterion here; the caller prunes them by magnitude and reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import InputError
from ..targets import Target, architecture, base_model

Gather = Callable[[str, torch.Tensor], None]  # (target name, its input rows (tokens, in_features), float32)


class _Stop(Exception):
    """Raised by the pre-hook of layer 0 once it has its inputs."""


def linear_targets(model: nn.Module, targets: list[Target]) -> dict[int, dict[str, nn.Linear]]:
    """The targets that are the weight of an ``nn.Linear`` inside encoder layer ``i``, by layer: ``{i: {name:
    module}}``."""
    by_layer: dict[int, dict[str, nn.Linear]] = {}
    for t in targets:
        if t.layer is None or not t.param_name.endswith(".weight"):
            continue
        module = model.get_submodule(t.param_name.rsplit(".", 1)[0])
        if isinstance(module, nn.Linear):
            by_layer.setdefault(t.layer, {})[t.name] = module
    return by_layer


def _token_rows(x: torch.Tensor, keep: torch.Tensor, seq_first: bool) -> torch.Tensor:
    """The rows of a linear layer's input `x` (batch and sequence leading) whose token `keep` (batch, seq) keeps."""
    flat_keep = (keep.t() if seq_first else keep).reshape(-1)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] != flat_keep.numel():  # an input that is not one row per token: take it whole
        return rows.float()
    return rows[flat_keep.to(rows.device)].float()


@torch.no_grad()
def prune_layerwise(model: nn.Module, batches: list[dict], targets: list[Target],
                    prune_layer: Callable[[int, dict[str, nn.Linear], Callable[[Gather], None]], None],
                    progress: Callable[[Iterator[int]], Iterator[int]] | None = None) -> None:
    """Prune `model`'s encoder layers in order over calibration `batches` (tokenized model inputs).

    Args:
        model: Any head class; changed in place by `prune_layer`.
        batches: Dicts of model inputs with ``attention_mask``.
        targets: The resolved targets to prune; those of each layer that are linear layers go to `prune_layer`.
        prune_layer: ``(layer index, {target name: linear module}, feed)``: `feed(gather)` runs the layer on
            every calibration batch with `gather(name, rows)` called on each linear's input rows (padding
            removed); the function then prunes those modules' weights in place.
        progress: Wraps the layer loop (e.g. tqdm).
    """
    arch = architecture(model)
    seq_first = arch.sequence_first
    base = base_model(model)[0]
    stack = list(base.get_submodule(arch.layer_stack))
    device = next(model.parameters()).device
    captured: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    hook = stack[0].register_forward_pre_hook(capture, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            try:
                model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
            except _Stop:
                pass
    finally:
        hook.remove()
        model.train(was_training)
    if len(captured) != len(batches):
        raise InputError("the calibration batches never reached the first encoder layer")
    keeps = [batch["attention_mask"].bool() for batch in batches]
    linears = linear_targets(model, targets)
    layers = range(len(stack)) if progress is None else progress(range(len(stack)))
    for i in layers:
        layer, modules = stack[i], linears.get(i, {})

        def run_all(layer=layer) -> list[torch.Tensor]:
            outs = []
            for args, kwargs in captured:
                out = layer(*args, **kwargs)
                outs.append(out[0] if isinstance(out, tuple) else out)
            return outs

        def feed(gather: Gather, modules=modules, layer=layer) -> None:
            current: list[torch.Tensor] = []
            hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: gather(n, _token_rows(args[0], current[0], seq_first)))
                     for n, m in modules.items()]
            try:
                for (args, kwargs), keep in zip(captured, keeps):
                    current[:] = [keep]
                    layer(*args, **kwargs)
            finally:
                for h in hooks:
                    h.remove()

        if modules:
            prune_layer(i, modules, feed)
        outputs = run_all()  # the inputs of the next layer, through this pruned one
        captured = [((out, *args[1:]), kwargs) if args else ((), {**kwargs, _hidden_key(kwargs): out})
                    for out, (args, kwargs) in zip(outputs, captured)]


def _hidden_key(kwargs: dict) -> str:
    for key in ("hidden_states", "x", "output_h"):
        if key in kwargs:
            return key
    raise InputError(f"cannot find the hidden states among the encoder layer's arguments {sorted(kwargs)}")
