"""A tiny study: tiny BERT, fixture GLUE and corpus files under one data root, a spec with 8 runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from glue_fixtures import save_tiny, write_corpus, write_glue

SPEC = """
name = "tiny"
model = "{model}"
sparsities = [0.0, 0.5]
regimes = ["pruned", "information_deletion", "pruned_after_finetuning", "random"]

[data]
dir = "{data}"
corpus = ["text/train.txt"]
dev_corpus = ["text/valid.txt"]

[pretrain]
steps = 4
prune_end = 4
prune_every = 2
batch_size = 4
max_seq_len = 16
max_dev_blocks = 8

[finetune]
tasks = ["RTE"]
lrs = [1e-3]
epochs = 1
seeds = [0]
batch_size = 4
max_seq_len = 16
max_train_samples = 8
prune_after_epochs = 1
epochs_after_pruning = 1
"""


def make_study(tmp: Path, extra: str = "", *, regimes: list[str] | None = None, layers: int | None = None) -> Path:
    """Write model, data and spec under `tmp`; return the spec path.

    `extra` is appended to the spec (e.g. a ``[layer_drop]`` table); `regimes` replaces the four regimes;
    `layers` gives the tiny BERT that many layers instead of 2.
    """
    model = save_tiny(tmp / "model")
    if layers is not None:
        config = transformers.AutoConfig.from_pretrained(model)
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        transformers.BertForMaskedLM(config).save_pretrained(model)
    data = tmp / "data"
    write_glue(data / "glue")
    (data / "text").mkdir(parents=True)
    write_corpus(data / "text" / "train.txt", lines=120)
    write_corpus(data / "text" / "valid.txt", lines=40, seed=1)
    spec = tmp / "tiny.toml"
    text = SPEC.format(model=model, data=data)
    if regimes is not None:
        text = text.replace('regimes = ["pruned", "information_deletion", "pruned_after_finetuning", "random"]',
                            f"regimes = {json.dumps(regimes)}")
    spec.write_text(text + extra)
    return spec
