"""prunelab: prune pretrained transformer encoders and measure what pruning does to transfer learning.

This module is the public Python API; ARCHITECTURE.md (at the repository's root) maps the package.
"""

__version__ = "0.1.0"

from .config import PruningConfig  # noqa: E402
from .masks_io import load_masks, save_masks  # noqa: E402
from .pruner import Pruner  # noqa: E402
from .schedules import is_update_step, sparsity_at  # noqa: E402
from .select import compute_masks  # noqa: E402
from .sparsity import sparsity_report  # noqa: E402
from .targets import ARCHITECTURES, KINDS, Target, resolve_targets  # noqa: E402

# Loaded on first use: they import transformers' model and Trainer code (seconds), which the core does not need.
_LAZY = {"from_pretrained": "artifact", "prune": "oneshot", "save_artifact": "artifact",
         "PruningCallback": "integrations.hf_trainer", "attach": "integrations.hf_trainer",
         "sparse_execution": "deploy.execution", "dense_execution": "deploy.execution", "prune_units": "methods.structured",
         "measure_speed": "deploy.speed"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES", "KINDS", "Pruner", "PruningCallback", "PruningConfig", "Target", "attach", "compute_masks",
    "dense_execution", "from_pretrained", "is_update_step", "load_masks", "measure_speed", "prune", "prune_units",
    "resolve_targets", "save_artifact", "save_masks", "sparse_execution", "sparsity_at", "sparsity_report",
]
