"""Thin integrations with training frameworks: they forward events to the Pruner and hold no pruning logic."""
