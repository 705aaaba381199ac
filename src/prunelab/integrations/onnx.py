"""Moved to ``prunelab.deploy.onnx`` (deprecated; this module goes in the next release)."""

from .._moved import forwarder

__getattr__ = forwarder(__name__, ["prunelab.deploy.onnx"])
