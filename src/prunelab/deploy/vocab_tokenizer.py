"""A tokenizer re-indexed to a subset of its vocabulary: the kept tokens, numbered 0..k-1 in their old order.

The tokenizer's ``tokenizers`` serialization (``tokenizer.json``) is rewritten: the model's vocabulary, the ids of
the added tokens, of the post-processor's special tokens and of the padding token. Which kinds can be cut so that a
text whose tokens are all kept is tokenized exactly as before (same tokens, ids mapped):

* ``WordPiece`` and ``WordLevel``: a subset of the vocabulary. WordPiece's greedy longest match takes, at each
  point of a word, the same piece from the subset as from the whole vocabulary when that piece is kept (a longer
  match would have been a longer match before too). A word that needs a removed piece is segmented again into
  kept pieces where the greedy match can, else it becomes the unknown token.
* ``BPE``: the merges producing a kept token are kept with every token they merge, recursively (the closure), and
  every base symbol (a token no merge produces: the 256 bytes of byte-level BPE), so that any text still
  tokenizes. The merges a word goes through are all in the cut set, and the cut set only lacks merges the word
  never reaches, so each step picks the same merge. A word that needs a removed token stays in smaller pieces.
* ``Unigram``: a subset of the pieces, scores unchanged. The best segmentation of a text of kept pieces is still
  available and nothing better was added. A text that needs a removed piece gets its next best segmentation.

Anything else (BPE with dropout, an unknown model) is refused with its kind named. The rewritten tokenizer is loaded
back through ``transformers`` (its class rebuilds the backend from the file) and checked to hold the rewritten
vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import InputError

KINDS = ("WordPiece", "WordLevel", "BPE", "Unigram")


def backend_json(tokenizer) -> dict:
    """The ``tokenizers`` serialization of a ``transformers`` tokenizer (``tokenizer.json``'s content)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"the tokenizer {type(tokenizer).__name__} has no tokenizers backend (tokenizer.json); only "
                         f"those can be re-indexed: {', '.join(KINDS)}")
    return json.loads(backend.to_str())


def model_kind(data: dict) -> str:
    """The tokenizer model's kind (``WordPiece``, ``BPE``, ...); older files omit the ``type`` field."""
    model = data["model"]
    kind = model.get("type")
    if kind is None:
        kind = ("BPE" if "merges" in model else "Unigram" if isinstance(model.get("vocab"), list) else
                "WordPiece" if "continuing_subword_prefix" in model else "WordLevel")
    return kind


def check_kind(data: dict) -> str:
    """The kind, if prunelab can re-index it exactly; otherwise an ``InputError`` naming it."""
    kind = model_kind(data)
    if kind not in KINDS:
        raise InputError(f"cannot re-index a {kind} tokenizer (only {', '.join(KINDS)}): its ids cannot be cut "
                         "without changing how kept text tokenizes")
    if kind == "BPE" and data["model"].get("dropout"):
        raise InputError("cannot re-index a BPE tokenizer with dropout: its tokenization is random; "
                         "save it without dropout first")
    return kind


def vocab_size(data: dict) -> int:
    """Ids the tokenizer can produce: its model's vocabulary and its added tokens."""
    ids = set(_vocab(data).values()) | {t["id"] for t in data.get("added_tokens", [])}
    return max(ids) + 1 if ids else 0


def _vocab(data: dict) -> dict[str, int]:
    vocab = data["model"]["vocab"]
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...], the id is the position
        return {piece: i for i, (piece, _) in enumerate(vocab)}
    return dict(vocab)


def _merges(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _merged(model: dict, a: str, b: str) -> str:
    """The token BPE makes of the pair (a, b): a continuing-subword prefix on `b` is dropped (tokenizers' rule)."""
    prefix = model.get("continuing_subword_prefix") or ""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


def special_ids(data: dict) -> set[int]:
    """Ids the tokenizer itself refers to: added tokens, the post-processor's tokens, the padding token, the
    unknown piece."""
    ids = {t["id"] for t in data.get("added_tokens", [])}
    ids |= set(_processor_ids(data.get("post_processor")))
    if data.get("padding"):
        ids.add(data["padding"]["pad_id"])
    model = data["model"]
    if model_kind(data) == "Unigram" and model.get("unk_id") is not None:
        ids.add(model["unk_id"])
    vocab = _vocab(data)
    if isinstance(model.get("unk_token"), str) and model["unk_token"] in vocab:
        ids.add(vocab[model["unk_token"]])
    return ids


def _processor_ids(processor: dict | None):
    if not processor:
        return
    for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
        if key in processor:
            yield processor[key][1]
    for token in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        yield from token["ids"]
    for inner in processor.get("processors") or []:  # Sequence
        yield from _processor_ids(inner)


def needed_ids(data: dict, keep: set[int]) -> set[int]:
    """What the tokenizer needs beyond the ids in `keep` to tokenize kept text as before (BPE: the merge closure
    and the base symbols; other kinds: nothing)."""
    if model_kind(data) != "BPE":
        return set()
    model, vocab = data["model"], _vocab(data)
    merges = _merges(model)
    produced = {_merged(model, a, b) for a, b in merges}
    tokens = {token for token, i in vocab.items() if i in keep} | {t for t in vocab if t not in produced}
    changed = True
    while changed:  # a token may be made by several merges, each used before or after others: to a fixed point
        changed = False
        for a, b in merges:
            if _merged(model, a, b) in tokens and not (a in tokens and b in tokens):
                tokens |= {a, b}
                changed = True
    return {vocab[t] for t in tokens if t in vocab} - keep


def reindex(data: dict, keep: list[int]) -> dict:
    """`data` (a ``tokenizer.json``) with only the ids in `keep` (sorted), renumbered 0..k-1 in that order.

    Every id the tokenizer refers to (``special_ids``, ``needed_ids``) must be in `keep`.
    """
    new_id = {old: new for new, old in enumerate(keep)}
    missing = sorted((special_ids(data) | needed_ids(data, set(keep))) - set(new_id))
    assert not missing, f"ids the tokenizer needs are not kept: {missing[:5]}"
    data = json.loads(json.dumps(data))  # a deep copy
    model, kind = data["model"], model_kind(data)
    if kind == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in keep if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {token: new_id[i] for token, i in _vocab(data).items() if i in new_id}
    if kind == "BPE":
        vocab = model["vocab"]
        model["merges"] = [[a, b] for a, b in _merges(model)
                           if a in vocab and b in vocab and _merged(model, a, b) in vocab]
    for token in data.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _remap_processor(data.get("post_processor"), new_id)
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return data


def _remap_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    for key in ("sep", "cls"):
        if key in processor:
            processor[key][1] = new_id[processor[key][1]]
    for token in (processor.get("special_tokens") or {}).values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    for inner in processor.get("processors") or []:
        _remap_processor(inner, new_id)


def rebuild(tokenizer, data: dict):
    """A tokenizer of `tokenizer`'s class from the rewritten `data`, loaded as ``AutoTokenizer`` loads a directory,
    and checked to hold `data`'s vocabulary, added tokens and special-token ids."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="prunelab-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        for file in Path(tmp).iterdir():  # vocabulary files of the old ids (vocab.txt, merges.txt, ...) go
            if file.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                file.unlink()
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        config_file = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.pop("added_tokens_decoder", None)  # keyed by old ids; tokenizer.json's added tokens say it
        if model_kind(data) == "Unigram" and "unk_id" in data["model"]:
            config["unk_id"] = data["model"]["unk_id"]  # classes that rebuild a Unigram take it as an argument
        config_file.write_text(json.dumps(config), encoding="utf-8")
        cut = AutoTokenizer.from_pretrained(tmp)
    got = json.loads(cut.backend_tokenizer.to_str())
    want_vocab, got_vocab = _vocab(data), _vocab(got)
    if got_vocab != want_vocab or model_kind(got) != model_kind(data) or (
            model_kind(data) == "Unigram" and got["model"].get("unk_id") != data["model"].get("unk_id")):
        raise InputError(f"transformers rebuilds {type(tokenizer).__name__} from a re-indexed tokenizer.json with "
                         "another vocabulary; this tokenizer cannot be cut")
    for name in ("added_tokens", "post_processor"):
        if got.get(name) != data.get(name):
            raise InputError(f"transformers rebuilds {type(tokenizer).__name__} with other {name.replace('_', ' ')} "
                             "than the re-indexed tokenizer.json; this tokenizer cannot be cut")
    return cut
