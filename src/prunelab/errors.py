"""The errors prunelab raises on purpose: bad input, an output in the way, an input not found.

The CLI prints one of these as one line and exits 2. Anything else that escapes a command is a bug: the CLI shows
it as an internal error with its traceback. Each class is also the built-in it refines (``InputError`` is a
``ValueError``), so code that catches the built-in keeps working.
"""

from __future__ import annotations


class PrunelabError(Exception):
    """An error raised on purpose; its message says what was received, what is allowed and how to fix it."""


class InputError(PrunelabError, ValueError):
    """A value, file or model that prunelab cannot use."""


class OutputExistsError(PrunelabError, FileExistsError):
    """An output that is in the way: not empty, not prunelab's own, or an input."""


class MissingInputError(PrunelabError, FileNotFoundError):
    """An input path that does not exist."""
