"""Moved to ``prunelab.study.recipes`` (deprecated; this module goes in the next release)."""

from .._moved import forwarder

__getattr__ = forwarder(__name__, ["prunelab.study.recipes"], {"RUN_KINDS": ("prunelab.study.recipes", "RECIPES"),
                                                              "RunKind": ("prunelab.study.recipes", "Recipe")})
