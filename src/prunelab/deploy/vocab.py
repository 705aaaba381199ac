"""Vocabulary cut: keep the tokens a task's (or a corpus's) text uses, and write a model with a smaller word-embedding
matrix (and MLM decoder) and a tokenizer re-indexed to match.

The text is tokenized by the model's own tokenizer; an id used at least `min_count` times is kept, with every id the
tokenizer or the config refers to (special and added tokens, the ids a BPE tokenizer needs to reach a kept token:
``vocab_tokenizer``), and, where the position ids count from the padding id (RoBERTa), every id up to it, so the
padding id does not move. Kept ids are renumbered 0..k-1 in their old order. The rows of the input embeddings, of an
untied output embedding and of its bias are gathered by transformers' own accessors (``get_input_embeddings``,
``get_output_embeddings``) and cut by its ``resize_token_embeddings``; a masks file covering the embeddings is cut
the same way. On a text whose tokens are all kept, the cut model computes the same hidden states bit for bit as the
uncut one; both are checked before anything is written: every counted text made of kept tokens must tokenize to the
same tokens, and the model's outputs on some of them must match.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from pathlib import Path

import torch

from ..artifact import DENSE_FILE, from_pretrained, resolve_model_path, save_artifact
from ..config import versions
from ..errors import InputError
from ..io import check_output_dir
from ..targets import ARCHITECTURES, resolve_targets
from .vocab_tokenizer import backend_json, check_kind, needed_ids, rebuild, reindex, special_ids, vocab_size

logger = logging.getLogger(__name__)

BATCH = 1000  # texts tokenized per call
CHECKED_OUTPUTS = 8  # texts the cut model is run on beside the uncut one


def prune_vocab(model: str, out: str | os.PathLike, *, task: str | None = None, data_dir: str | None = None,
                corpus: list[str] | None = None, min_count: int = 1, overwrite: bool = False) -> dict:
    """Cut `model`'s vocabulary to the tokens the training text of `task` (or the text of `corpus`) uses, and save
    the cut model with its re-indexed tokenizer to `out` (atomically; nothing is written on an error).

    Args:
        model: A model directory, pruned artifact, hub id or alias, with a tokenizer.
        out: The output directory (absent or empty, or prunelab's own with `overwrite`).
        task: A GLUE task: its training text is counted, its dev text measures what the cut costs.
        data_dir: The GLUE data directory for `task` (default: the hub).
        corpus: Plain-text files (one text per line) to count instead of a task.
        min_count: Keep an id used at least this many times.

    Returns:
        The report that ``prunelab.json`` holds under ``vocab_cut``: vocabulary sizes before and after, what was
        kept and why, the checks, parameter bytes, and with `task` what the cut does to each dev split's text
        (tokens of a removed id, examples affected, unknown tokens before and after); plus ``file_bytes_before``
        and ``file_bytes_after``, the model files' sizes.
    """
    if (task is None) == (not corpus):
        raise InputError("give the text to keep the tokens of: either --task T (with --data-dir D) or --corpus FILE "
                         "[FILE ...], not both")
    if data_dir is not None and task is None:
        raise InputError("--data-dir goes with --task; --corpus names its files itself")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InputError(f"--min-count {min_count!r} must be an integer >= 1 (1 keeps every token the text uses)")
    source = resolve_model_path(str(model))
    check_output_dir(out, overwrite, inputs=[source, data_dir, *(corpus or [])])
    texts, dev = _texts(task, data_dir, corpus)
    loaded = from_pretrained(model)
    net, tokenizer, masks = loaded.model, loaded.tokenizer, loaded.masks
    if tokenizer is None:
        raise InputError(f"{model!r} has no tokenizer files; the vocabulary cut counts ids with the model's own "
                         "tokenizer: add them (tokenizer.json) to the model directory")
    data = backend_json(tokenizer)
    kind = check_kind(data)
    rows = net.get_input_embeddings().num_embeddings
    if vocab_size(data) > rows:
        raise InputError(f"the tokenizer of {model!r} produces ids up to {vocab_size(data) - 1} but the model has "
                         f"{rows} word embeddings; they do not belong together")

    counts, encoded = count_ids(tokenizer, texts)
    used = {i for i, n in counts.items() if n >= min_count}
    special = (special_ids(data) | set(tokenizer.all_special_ids) | set(config_ids(net.config).values())) - used
    below_pad = set()
    if ARCHITECTURES[net.config.model_type].positions == "after_padding":  # position ids count from the padding id
        below_pad = set(range(net.config.pad_token_id + 1)) - used - special
    base = used | special | below_pad
    for_tokenizer = needed_ids(data, base)
    keep = sorted(base | for_tokenizer)
    new_id = {old: new for new, old in enumerate(keep)}
    logger.info("keeping %d of %d ids: %d used at least %d times, %d special, %d up to the padding id, %d for the %s "
                "tokenizer", len(keep), rows, len(used), min_count, len(special), len(below_pad), len(for_tokenizer), kind)
    cut_tokenizer = rebuild(tokenizer, reindex(data, keep))
    checked = check_tokenization(cut_tokenizer, texts, encoded, new_id)

    bytes_before = parameter_bytes(net)
    reference = copy.deepcopy(net)
    cut_embeddings(net, keep)
    max_abs_diff = check_outputs(reference, net, tokenizer, cut_tokenizer, [t for t, same in zip(texts, checked) if same],
                                 keep)
    del reference
    if masks:
        masks = cut_masks(net, masks, keep)
    report = {
        "source": str(model), "model_type": net.config.model_type, "tokenizer": type(tokenizer).__name__,
        "tokenizer_kind": kind, "text": {"task": task, "split": "train"} if task else {"corpus": [str(c) for c in corpus]},
        "texts": len(texts), "tokens": sum(counts.values()), "min_count": min_count,
        "vocab_before": rows, "vocab_after": len(keep), "kept_used": len(used), "kept_special": len(special),
        "kept_below_padding": len(below_pad), "kept_for_tokenizer": len(for_tokenizer),
        "used_below_min_count": sum(1 for n in counts.values() if n < min_count),
        "tokenization_checked": {"texts": sum(checked), "identical": sum(checked)}, "max_abs_diff": max_abs_diff,
        "parameter_bytes_before": bytes_before, "parameter_bytes_after": parameter_bytes(net),
        "dev": {split: dev_impact(tokenizer, cut_tokenizer, examples, new_id) for split, examples in dev.items()} or None,
        "versions": versions(),
    }
    save_artifact(net, cut_tokenizer, masks, {**loaded.info, "vocab_cut": report}, out, overwrite=overwrite)
    before, after = Path(source) / DENSE_FILE, Path(out) / DENSE_FILE
    return {**report, "file_bytes_before": before.stat().st_size if before.is_file() else None,
            "file_bytes_after": after.stat().st_size if after.is_file() else None}


def _texts(task: str | None, data_dir: str | None, corpus: list[str] | None) -> tuple[list[str], dict[str, list]]:
    """The texts to count, and the dev splits (name -> examples) to measure the cut on (none for a corpus)."""
    if corpus:
        from ..data.corpus import read_corpus

        return read_corpus(corpus), {}
    from ..data.glue import get_task, load_task

    spec = get_task(task)
    splits = load_task(spec, data_dir)
    texts = [text for a, b, _ in splits["train"] for text in (a, b) if text]
    return texts, {split: splits[split] for split in spec.dev_splits}


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False, disable=None)


def _encode(tokenizer, texts: list[str], desc: str) -> list[list[int]]:
    """Each text's ids without special tokens, tokenized in batches."""
    ids: list[list[int]] = []
    for start in _progress(range(0, len(texts), BATCH), desc):
        ids += tokenizer(texts[start:start + BATCH], add_special_tokens=False)["input_ids"]
    return ids


def count_ids(tokenizer, texts: list[str]) -> tuple[Counter, list[list[int]]]:
    """How often `tokenizer` produces each id on `texts` (special tokens not added), and each text's ids."""
    encoded = _encode(tokenizer, texts, "counting tokens")
    return Counter(i for ids in encoded for i in ids), encoded


def config_ids(config) -> dict[str, int]:
    """The token ids a model config names (``pad_token_id``, ``bos_token_id``, ...), by attribute."""
    return {key: value for key, value in config.to_dict().items()
            if key.endswith("_token_id") and isinstance(value, int) and not isinstance(value, bool)}


def check_tokenization(cut_tokenizer, texts: list[str], encoded: list[list[int]], new_id: dict[int, int]) -> list[bool]:
    """Whether each text is made of kept ids; each such text must tokenize with `cut_tokenizer` to its old tokens
    renumbered, else an ``InputError`` (the tokenizer is not cut, nothing is written)."""
    kept = [all(i in new_id for i in ids) for ids in encoded]
    subset = [t for t, k in zip(texts, kept) if k]
    got = iter(_encode(cut_tokenizer, subset, "checking the cut tokenizer"))
    for text, ids, k in zip(texts, encoded, kept):
        if k and next(got) != [new_id[i] for i in ids]:
            raise InputError(f"the re-indexed {type(cut_tokenizer).__name__} tokenizes {text[:60]!r} otherwise than "
                             "the original although all its tokens are kept; this tokenizer cannot be cut")
    return kept


def vocabulary_tensors(model: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """The parameters indexed by the vocabulary: the input embeddings' weight, the output embeddings' weight and
    bias where the model has them (once each, by identity: tied ones are one parameter)."""
    rows = model.get_input_embeddings().num_embeddings
    found = {}
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    for module in modules:
        for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if isinstance(param, torch.nn.Parameter) and param.shape[0] == rows:
                found[id(param)] = param
    return found


def cut_embeddings(model: torch.nn.Module, keep: list[int]) -> None:
    """Keep only the rows `keep` (sorted) of `model`'s vocabulary tensors, in that order; in place.

    The kept rows are moved first and transformers' ``resize_token_embeddings`` drops the rest (it updates
    ``config.vocab_size`` and re-ties a tied decoder); the config's token ids are renumbered.
    """
    rows = model.get_input_embeddings().num_embeddings
    kept = set(keep)
    order = torch.tensor(keep + [i for i in range(rows) if i not in kept])
    new_id = {old: new for new, old in enumerate(keep)}
    ids = config_ids(model.config)
    params = vocabulary_tensors(model)
    pointers = {p.data_ptr() for p in params.values()}
    names = [name for name, t in model.state_dict().items() if t.data_ptr() in pointers]  # with their aliases
    with torch.no_grad():
        for param in params.values():
            param.data = param.data[order]
    model.resize_token_embeddings(len(keep))
    with torch.no_grad():  # the kept rows may still be a view of the whole old matrix: let it go
        for param in vocabulary_tensors(model).values():
            param.data = param.data.clone()
    model.tie_weights()
    for key, old in ids.items():
        setattr(model.config, key, new_id[old])
    embeddings = model.get_input_embeddings()
    if embeddings.padding_idx is not None and "pad_token_id" in ids:
        embeddings.padding_idx = new_id[ids["pad_token_id"]]
    state = model.state_dict()
    wrong = [f"{name} {tuple(state[name].shape)}" for name in names if state[name].shape[0] != len(keep)]
    assert not wrong, f"vocabulary tensors left uncut: {wrong}"
    assert model.config.vocab_size == len(keep) == model.get_input_embeddings().num_embeddings


def cut_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """`masks` with the rows of the (cut) word embeddings' mask cut to `keep`."""
    index = torch.tensor(keep)
    masks = dict(masks)
    for target in resolve_targets(model):
        if target.kind == "embeddings" and target.name in masks:
            masks[target.name] = masks[target.name][index]
            if tuple(masks[target.name].shape) != target.shape:
                raise InputError(f"the mask of {target.name} has shape {tuple(masks[target.name].shape)} after the "
                                 f"cut but the weight {target.shape}; the artifact's masks do not fit its weights")
    return masks


def check_outputs(reference, model, tokenizer, cut_tokenizer, texts: list[str], keep: list[int]) -> float | None:
    """Run both models on up to ``CHECKED_OUTPUTS`` texts of kept tokens: the base model's hidden states must be
    equal bit for bit; returns the largest absolute difference of the first output (an MLM's logits are compared
    on the kept columns; a matrix product of another width may round differently), ``None`` without texts."""
    texts = texts[:CHECKED_OUTPUTS]
    if not texts:
        return None
    old = tokenizer(texts, padding=True, return_tensors="pt")
    new = cut_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want, got = reference(**old, output_hidden_states=True), model(**new, output_hidden_states=True)
    if not all(torch.equal(a, b) for a, b in zip(want.hidden_states, got.hidden_states)):
        raise RuntimeError("the cut model's hidden states differ from the uncut model's on kept tokens")
    first_want, first_got = want[0], got[0]
    if first_want.shape[-1] == reference.get_input_embeddings().num_embeddings and first_want.dim() == 3:
        first_want = first_want[..., keep]
    return float((first_want - first_got).abs().max())


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors, each storage once (tied weights count once)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def dev_impact(tokenizer, cut_tokenizer, examples: list, new_id: dict[int, int]) -> dict:
    """What the cut does to a dev split's text: its tokens (special tokens not counted), those of a removed id,
    the examples with one, and the unknown tokens before and after the cut."""
    texts = [text for a, b, _ in examples for text in (a, b) if text]
    owner = [n for n, (a, b, _) in enumerate(examples) for text in (a, b) if text]
    before = _encode(tokenizer, texts, "dev text")
    after = _encode(cut_tokenizer, texts, "dev text, cut")
    removed = [sum(1 for i in ids if i not in new_id) for ids in before]
    unk_old, unk_new = tokenizer.unk_token_id, cut_tokenizer.unk_token_id
    return {"examples": len(examples), "tokens": sum(map(len, before)), "removed_tokens": sum(removed),
            "examples_affected": len({owner[n] for n, r in enumerate(removed) if r}),
            "unk_before": sum(ids.count(unk_old) for ids in before) if unk_old is not None else 0,
            "unk_after": sum(ids.count(unk_new) for ids in after) if unk_new is not None else 0,
            "tokens_after": sum(map(len, after))}
