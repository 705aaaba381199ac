"""Analyses of what pruning removes (Gordon et al. 2020): plain functions on models and tensors that return data.

Modules: ``weights`` (statistics, pruned mass, per-head pruning, heatmaps), ``movement`` (sort-order
movement between checkpoints), ``masks`` (mask difference), ``features`` (hidden-state similarity and
sensitivity), ``figures`` (one figure per analysis; needs matplotlib), ``outputs`` (``write_analysis``: an
analysis's files, CSV, JSON and PNG, as ``prunelab analyze`` writes them).
"""

from ..data.texts import load_texts
from .common import check_same_architecture, check_tokenizer, magnitude_masks, split_heads
from .features import encode, layer_similarity, mlm_loss, sensitivity, similarity_curves
from .masks import compare_masks, load_mask_source, mask_difference, random_baseline
from .movement import sort_order_movement, sort_positions
from .outputs import ANALYSES, AnalysisOutput, write_analysis
from .weights import embedding_heatmap, head_pruning, key_heatmap, pruned_mass, subword_length, weight_stats

__all__ = [
    "ANALYSES", "AnalysisOutput", "check_same_architecture", "check_tokenizer", "compare_masks", "embedding_heatmap",
    "encode", "head_pruning", "key_heatmap", "layer_similarity", "load_mask_source", "load_texts", "magnitude_masks",
    "mask_difference", "mlm_loss", "pruned_mass", "random_baseline", "sensitivity", "similarity_curves",
    "sort_order_movement", "sort_positions", "split_heads", "subword_length", "weight_stats", "write_analysis",
]
