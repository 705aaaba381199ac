"""Layer dropping as a command: load a model, choose the layers, remove them, time it, and save the smaller model."""

from __future__ import annotations

import torch

from ..artifact import load_model, resolve_model_path, save_artifact
from ..config import versions
from ..data.texts import load_texts
from ..methods.layer_drop import (choose_by_contribution, contribution_scores, drop_layers, inference_seconds, layers_to_drop,
                                  num_layers)
from ..errors import InputError
from ..io import check_output_dir


def drop_and_save(model: str, out: str, *, strategy: str | None = None, count: int | None = None,
                  layers: list[int] | None = None, min_similarity: float | None = None, text: str | None = None,
                  overwrite: bool = False) -> dict:
    """Load `model`, drop layers (by `strategy` or explicit `layers`), measure, and save to `out` atomically.

    Returns:
        What ``prunelab.json`` holds: the dropped layers, contribution scores when used, parameters and
        median forward-pass seconds before and after (same batch, same run).
    """
    check_output_dir(out, overwrite, inputs=[resolve_model_path(model), text])
    loaded, tokenizer = load_model(model)
    n = num_layers(loaded)
    texts = load_texts(text)
    scores = None
    if layers is None:
        if strategy == "contribution":
            if tokenizer is None:
                raise InputError(f"the contribution strategy needs a tokenizer and {model!r} has none")
            scores = contribution_scores(loaded, tokenizer, texts)
            layers = choose_by_contribution(scores, count=count, min_similarity=min_similarity)
        else:
            if count is None:
                raise InputError(f"--strategy {strategy} needs --count K")
            layers = layers_to_drop(n, strategy, count)
    if tokenizer is not None:
        batch = tokenizer(texts[:16], padding=True, truncation=True, max_length=128, return_tensors="pt")
    else:
        batch = {"input_ids": torch.randint(5, loaded.config.vocab_size, (16, 64))}
    params_before = sum(p.numel() for p in loaded.parameters())
    seconds_before = inference_seconds(loaded, batch)
    drop_layers(loaded, layers)
    info = {
        "source": model, "strategy": strategy or "explicit", "dropped": sorted(layers), "layers_before": n,
        "layers_after": num_layers(loaded), "contribution_scores": scores, "params_before": params_before,
        "params_after": sum(p.numel() for p in loaded.parameters()), "seconds_before": seconds_before,
        "seconds_after": inference_seconds(loaded, batch), "timing_batch": list(batch["input_ids"].shape),
        "versions": versions(),
    }
    save_artifact(loaded, tokenizer, None, info, out, overwrite=overwrite)
    return info
