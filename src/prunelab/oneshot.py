"""One-shot pruning of a saved model (``prunelab prune``), and the table of its targets (``prunelab inspect``)."""

from __future__ import annotations

import os

from .artifact import from_pretrained, load_model, mask_selection, resolve_model_path, save_artifact
from .config import PruningConfig, versions
from .io import check_output_dir
from .masks_io import check_masks
from .pruner import Pruner
from .sparsity import sparsity_report
from .targets import resolve_targets


def prune(model: str, config: PruningConfig, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """One-shot prune `model` to ``config.sparsity`` and save the artifact to `out`.

    Returns:
        The artifact's info (what ``prunelab.json`` holds): source, config, versions, sparsity report.
    """
    check_output_dir(out, overwrite, inputs=[resolve_model_path(model)])
    loaded, tokenizer = load_model(model)
    pruner = Pruner(loaded, config)
    pruner.update_masks(config.sparsity, step=0)
    info = {
        "source": model,
        "model_type": loaded.config.model_type,
        "model_class": type(loaded).__name__,
        "config": config.to_dict(),
        "versions": versions(),
        "report": pruner.sparsity_report(),
    }
    save_artifact(loaded, tokenizer, pruner.masks, info, out, overwrite=overwrite)
    return info


def inspect(model: str, include: str | None = None, exclude: str | None = None) -> dict:
    """The resolved target table of `model` with each target's current sparsity.

    When `model` is a pruned artifact, each row also carries its ``mask_sparsity``.
    """
    loaded, _, masks, info = from_pretrained(model)
    if masks is not None:  # masks of the artifact's own selection of targets, each of its weight's shape
        check_masks(masks, resolve_targets(loaded, **mask_selection(loaded, info.get("config", {}), masks)),
                    f"the masks of {model!r}")
    targets = resolve_targets(loaded, include, exclude)
    return {"model": model, "model_type": loaded.config.model_type, "model_class": type(loaded).__name__,
            **sparsity_report(loaded, targets, masks)}
