"""One-shot pruning of a saved model (``prunelab prune``: by magnitude, at random, or over calibration data by
Wanda or SparseGPT), and the table of its targets (``prunelab inspect``)."""

from __future__ import annotations

import os

import torch

from .artifact import from_pretrained, load_model, mask_selection, resolve_model_path, save_artifact
from .config import CALIBRATED, COMMAND_CRITERIA, PruningConfig, check_criterion, versions
from .data.calibration import Calibration, calibration_batches
from .errors import InputError
from .io import check_output_dir
from .masks_io import check_masks
from .methods.sparsegpt import sparsegpt_masks
from .methods.wanda import wanda_masks
from .pruner import Pruner
from .select import compute_masks, nm_masks, num_to_prune
from .sparsity import sparsity_report
from .targets import get_parameter, input_axis, resolve_targets


ONE_SHOT = COMMAND_CRITERIA["prunelab prune"]  # the criteria ``prune`` takes


def prune(model: str, config: PruningConfig, out: str | os.PathLike, *, overwrite: bool = False,
          calibration: Calibration | None = None, progress: bool = False) -> dict:
    """One-shot prune `model` to ``config.sparsity`` and save the artifact to `out`.

    ``wanda`` and ``sparsegpt`` need `calibration` (sequences the model reads); they prune the linear layers
    inside the encoder layers, and the other targets (embeddings, pooler, XLNet's 3-D attention weights) by
    magnitude, which the info records (``fallback``).

    Returns:
        The artifact's info (what ``prunelab.json`` holds): source, config, versions, sparsity report.
    """
    check_criterion(config.criterion, "prunelab prune")
    if config.criterion in CALIBRATED and calibration is None:
        raise InputError(f"--criterion {config.criterion} needs calibration data: --calibration TASK (with --data-dir, "
                         "or from the hub) or --calibration-corpus FILES")
    if config.criterion not in CALIBRATED and calibration is not None:
        raise InputError(f"--calibration applies to --criterion wanda or sparsegpt, not {config.criterion}; drop it")
    inputs = [resolve_model_path(model)] + ([calibration.data_dir, *calibration.corpus] if calibration else [])
    check_output_dir(out, overwrite, inputs=inputs)
    loaded, tokenizer = load_model(model)
    info_extra = {}
    if calibration is not None:  # read and checked before anything is written
        batches = calibration_batches(calibration, tokenizer)
        masks, fallback = calibrated_masks(loaded, config, batches, progress=progress)
        pruner = Pruner(loaded, config, masks=masks)
        info_extra = {"calibration": calibration.describe(), "fallback": {"criterion": "magnitude", "targets": fallback}}
    else:
        pruner = Pruner(loaded, config)
        pruner.update_masks(config.sparsity, step=0)
    info = {
        "source": model,
        "model_type": loaded.config.model_type,
        "model_class": type(loaded).__name__,
        "config": config.to_dict(),
        **info_extra,
        "versions": versions(),
        "report": pruner.sparsity_report(),
    }
    save_artifact(loaded, tokenizer, pruner.masks, info, out, overwrite=overwrite)
    return info


def calibrated_masks(model, config: PruningConfig, batches: list[dict], *, progress: bool = False
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Wanda's or SparseGPT's masks of `model`'s targets under `config` (in place: SparseGPT updates the kept
    weights), layer by layer over calibration `batches`; the targets outside the encoder's linear layers get
    magnitude masks. Returns the masks (every target, each exact: round(s·n) zeros, or N:M) and the names of the
    targets pruned by magnitude."""
    targets = resolve_targets(model, config.include, config.exclude, config.layers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = lambda layers: tqdm(layers, desc=f"{config.criterion} layer by layer", unit="layer")  # noqa: E731
    if config.criterion == "wanda":
        masks = wanda_masks(model, batches, targets, config.sparsity, scope=config.scope, structure=config.structure,
                            progress=bar)
    else:
        masks = sparsegpt_masks(model, batches, targets, config.sparsity, structure=config.structure, progress=bar)
    rest = [t for t in targets if t.name not in masks]
    weights = {t.name: get_parameter(model, t).detach() for t in rest}
    if config.structure:
        masks.update(nm_masks(weights, config.structure, input_axes={t.name: input_axis(t) for t in rest}))
    elif weights:
        scope = "matrix" if config.scope == "row" else config.scope
        masks.update(compute_masks(weights, config.sparsity, scope=scope))
    for t in targets:  # exact counts, as every prunelab mask (N:M: exact per group, so per target too)
        expected = num_to_prune(config.sparsity, t.numel)
        if config.scope != "global" and int((~masks[t.name]).sum()) != expected:
            raise RuntimeError(f"{config.criterion} masks of {t.name!r} prune {int((~masks[t.name]).sum())} weights, "
                               f"expected {expected}")
    return masks, [t.name for t in rest]


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
