"""Pruning methods beyond the Pruner's masks, as library code with no Trainer: layer dropping, learned masks,
and the losses of knowledge-aware pruning."""
