"""Training pipelines built on the HF Trainer: MLM pre-training with pruning, and GLUE fine-tuning."""
