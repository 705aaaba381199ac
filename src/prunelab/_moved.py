"""Old import paths of names that moved, kept for one release: each use warns (``DeprecationWarning``)."""

from __future__ import annotations

import importlib
import warnings


def forwarder(old: str, new_modules: list[str], renamed: dict[str, tuple[str, str]] | None = None):
    """A module ``__getattr__`` for the old module `old`: a name is looked up in `new_modules` in order (or where
    `renamed` maps it: name -> (module, new name)), with a warning that names its new place."""
    renamed = renamed or {}

    def __getattr__(name: str):
        places = [renamed[name]] if name in renamed else [(m, name) for m in new_modules]
        for module_name, new_name in places:
            module = importlib.import_module(module_name)
            if hasattr(module, new_name):
                warnings.warn(f"{old}.{name} moved to {module_name}.{new_name}; the old name goes in the next release",
                              DeprecationWarning, stacklevel=2)
                return getattr(module, new_name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
