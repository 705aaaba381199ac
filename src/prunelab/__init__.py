"""prunelab: prune pretrained transformer encoders and measure what pruning does to transfer learning."""

__version__ = "0.1.0"

from .config import PruningConfig  # noqa: E402
from .pruner import Pruner, load_masks, save_masks  # noqa: E402
from .report import sparsity_report  # noqa: E402
from .schedules import is_update_step, sparsity_at  # noqa: E402
from .select import compute_masks  # noqa: E402
from .targets import ARCHITECTURES, KINDS, Target, resolve_targets  # noqa: E402

__all__ = [
    "ARCHITECTURES", "KINDS", "Pruner", "PruningConfig", "Target", "compute_masks", "is_update_step",
    "load_masks", "resolve_targets", "save_masks", "sparsity_at", "sparsity_report",
]
