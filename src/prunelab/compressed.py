"""Moved (deprecated; goes in the next release): the format to ``prunelab.codec``, compress and decompress to
``prunelab.deploy.compressed``, reading a compressed artifact to ``prunelab.artifact``."""

from ._moved import forwarder

__getattr__ = forwarder(__name__, ["prunelab.codec", "prunelab.artifact", "prunelab.deploy.compressed"],
                        {"load_checkpoint": ("prunelab.artifact", "read_checkpoint")})
