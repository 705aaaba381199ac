"""Structured pruning as a command: load a model, score its heads and FFN neurons, remove them, save the smaller model."""

from __future__ import annotations

import torch

from ..artifact import from_pretrained, resolve_model_path, save_artifact
from ..config import versions
from ..methods.structured import UNIT_CRITERIA, UNIT_SCOPES, prune_units, remove_units, unit_counts
from ..targets import architecture, base_model
from .common import check_number
from ..errors import InputError
from ..io import check_output_dir


def importance_batches(model: str, tokenizer, task: str, data_dir: str | None, *, samples: int, batch_size: int,
                       max_seq_len: int, seed: int):
    """The classifier of `model` for `task` and `samples` training examples of it in batches, tokenized by
    `tokenizer` (for ``importance``)."""
    from transformers import DataCollatorWithPadding

    from ..data.glue import get_task, load_task
    from .grid import encode, load_classifier, subsample

    spec = get_task(task)
    if tokenizer is None:
        raise InputError(f"the importance criterion tokenizes task data and {model!r} has no tokenizer")
    rows = subsample(load_task(spec, data_dir)["train"], samples, seed)
    data = encode(rows, tokenizer, max_seq_len, spec.is_regression)
    collate = DataCollatorWithPadding(tokenizer)
    batches = [collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
               for start in range(0, len(data), batch_size)]
    return load_classifier(model, spec, seed), batches


def prune_structured(model: str, out: str, *, heads: float = 0.0, ffn: float = 0.0, criterion: str = "magnitude",
                     scope: str = "layer", seed: int = 0, min_sparsity: float | None = None,
                     allow_empty_attention: bool = False, task: str | None = None, data_dir: str | None = None,
                     samples: int = 256, batch_size: int = 16, max_seq_len: int = 128, overwrite: bool = False) -> dict:
    """Load `model`, remove the `heads` and `ffn` fractions of its units by `criterion`, save it to `out`.

    Returns:
        What ``prunelab.json`` holds: the settings, the kept heads of each layer, the FFN widths, and parameters
        and bytes of the encoder before and after.
    """
    check_number("--heads", heads, low=0.0, high=1.0)
    check_number("--ffn", ffn, low=0.0, high=1.0)
    if criterion not in UNIT_CRITERIA:
        raise InputError(f"unknown --criterion {criterion!r}; allowed: {', '.join(UNIT_CRITERIA)}")
    if scope not in UNIT_SCOPES:
        raise InputError(f"unknown --scope {scope!r}; allowed: {', '.join(UNIT_SCOPES)}")
    if criterion == "importance" and not task:
        raise InputError("--criterion importance needs task data: give --task (and --data-dir)")
    if criterion == "from-masks" and min_sparsity is None:
        raise InputError("--criterion from-masks needs --threshold F: a unit whose weights are pruned to at least F goes")
    if criterion == "from-masks" and (heads or ffn):
        raise InputError("--heads and --ffn do not apply to --criterion from-masks, which removes every unit pruned "
                         "to at least --threshold; drop them")
    if criterion != "from-masks" and min_sparsity is not None:
        raise InputError(f"--threshold applies to --criterion from-masks only, not {criterion}; drop it")
    if min_sparsity is not None:
        check_number("--threshold", min_sparsity, low=0.0, high=1.0)
    check_number("--samples", samples, low=1, integer=True)
    check_output_dir(out, overwrite, inputs=[resolve_model_path(model), data_dir])
    loaded = from_pretrained(model)
    net = loaded.model
    architecture(net)  # an unsupported model type fails here, before any work
    if criterion == "from-masks" and not loaded.masks:
        raise InputError(f"--criterion from-masks needs a pruned artifact with masks; {model!r} has none")
    batches, scored = None, net
    if criterion == "importance":
        scored, batches = importance_batches(model, loaded.tokenizer, task, data_dir, samples=samples,
                                             batch_size=batch_size, max_seq_len=max_seq_len, seed=seed)
    before = _sizes(net)
    counts = unit_counts(net)
    settings = dict(heads=heads, ffn=ffn, criterion=criterion, scope=scope, seed=seed, min_sparsity=min_sparsity,
                    allow_empty_attention=allow_empty_attention)
    if scored is not net:  # importance is measured on the task's classifier; the same units go from `net`
        keep = prune_units(scored, **settings, batches=batches)
        remove_units(net, keep)
    else:
        keep = prune_units(net, **settings, masks=loaded.masks)
    info = {"source": model, "model_type": net.config.model_type, "model_class": type(net).__name__,
            "structured": {**settings, "threshold": settings.pop("min_sparsity"), "task": task, "samples": samples if criterion == "importance" else None},
            "heads_before": counts["heads"], "ffn_before": counts["ffn"], "kept_heads": keep["heads"],
            "heads_after": unit_counts(net)["heads"], "ffn_after": unit_counts(net)["ffn"],
            **{f"{what}_{when}": value for when, sizes in (("before", before), ("after", _sizes(net)))
               for what, value in zip(("encoder_params", "params", "bytes"), sizes)}, "versions": versions()}
    save_artifact(net, loaded.tokenizer, None, info, out, overwrite=overwrite)
    return info


def _sizes(model: torch.nn.Module) -> tuple[int, int, int]:
    """Parameters of the encoder layers, of the whole model, and the bytes of the whole model's parameters."""
    layers = base_model(model)[0].get_submodule(architecture(model).layer_stack)
    params = list(model.parameters())
    return (sum(p.numel() for p in layers.parameters()), sum(p.numel() for p in params),
            sum(p.numel() * p.element_size() for p in params))
