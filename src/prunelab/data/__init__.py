"""Readers of the data the pipelines train and evaluate on: GLUE tasks, pre-training text, the packaged text sample."""
