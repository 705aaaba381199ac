"""Pre-training text: plain-text files (one document or paragraph per line; WikiText works), a dev split,
and the tokenized blocks masked-LM training reads."""

from __future__ import annotations

import os
from pathlib import Path
from ..errors import InputError, MissingInputError


def read_corpus(files: list[str | os.PathLike]) -> list[str]:
    """Non-empty lines of `files`, in order (UTF-8).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is not UTF-8 text, or all files are empty.
    """
    if not files:
        raise InputError("no corpus file given; pass --corpus FILE [FILE ...]")
    lines: list[str] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise MissingInputError(f"corpus file {path} not found")
        with open(path, "rb") as f:  # decode line by line, so an error names the exact line
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise InputError(f"{path}:{lineno}: not UTF-8 text; pass plain-text files, one document or paragraph per line") from None
                if line:
                    lines.append(line)
    if not lines:
        raise InputError(f"corpus {', '.join(map(str, files))} has no text")
    return lines


def split_dev(lines: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last `fraction` of lines (at least one) as the dev split; deterministic."""
    n_dev = max(1, round(len(lines) * fraction))
    if n_dev >= len(lines):
        raise InputError(f"the corpus has {len(lines)} lines, too few to hold out a dev split; add text or pass --dev-file")
    return lines[:-n_dev], lines[-n_dev:]


def to_blocks(lines: list[str], tokenizer, max_seq_len: int, batch: int = 1000) -> list[list[int]]:
    """Tokenize `lines`, concatenate them and cut into blocks of `max_seq_len` tokens including special tokens.

    The tail shorter than a block is dropped (as ``run_mlm.py`` does).
    """
    prefix, suffix = special_tokens(tokenizer)
    body = max_seq_len - len(prefix) - len(suffix)
    ids: list[int] = []
    for start in range(0, len(lines), batch):
        for row in tokenizer(lines[start:start + batch], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    return [prefix + ids[i:i + body] + suffix for i in range(0, len(ids) - body + 1, body)]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence (e.g. [CLS] and [SEP]; XLNet's come after)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    raise InputError(f"cannot find where {type(tokenizer).__name__} puts the text among its special tokens")


def read_hub_corpus(spec: str, split: str = "train", column: str = "text") -> list[str]:
    """Non-empty lines of column `column` of an HF dataset, ``NAME`` or ``NAME:CONFIG`` (e.g.
    ``Salesforce/wikitext:wikitext-103-raw-v1``). Needs ``pip install 'prunelab[datasets]'`` and network."""
    try:
        import datasets
    except ImportError:
        raise InputError("reading a corpus from the hub needs the datasets package: pip install 'prunelab[datasets]'") from None
    name, _, config = spec.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # network or hub errors come in many types
        raise InputError(f"cannot load dataset {spec!r} split {split!r} from the hub: {str(err).splitlines()[0]}") from None
    if column not in rows.column_names:
        raise InputError(f"dataset {spec!r} has no column {column!r}; columns: {', '.join(rows.column_names)}")
    return [line.strip() for line in rows[column] if line and line.strip()]
