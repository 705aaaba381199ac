"""Plain text for analyses and layer dropping: a file with one text per line, or the sample packaged with prunelab."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from ..errors import InputError, MissingInputError

SAMPLE_TEXT = "sample.txt"


def load_texts(path: str | Path | None = None, max_texts: int | None = None) -> list[str]:
    """Non-empty lines of a text file, or of the sample shipped with prunelab when `path` is None.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file holds no text, or `max_texts` < 1.
    """
    if max_texts is not None and max_texts < 1:
        raise InputError(f"max_texts {max_texts} must be at least 1")
    if path is None:
        text, where = resources.files(__package__).joinpath(SAMPLE_TEXT).read_text(encoding="utf-8"), "the packaged sample"
    else:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"text file {str(path)!r} does not exist; pass a file with one text per line, "
                                    "or omit --text to use the packaged sample")
        text, where = path.read_text(encoding="utf-8", errors="replace"), str(path)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"text file {where!r} holds no text; pass a file with one text per line")
    return lines[:max_texts] if max_texts else lines
