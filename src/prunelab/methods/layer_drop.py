"""Layer dropping (Sajjad et al. 2020, "Poor Man's BERT"): choose whole transformer layers and remove them.

Layers are numbered from 0, like every other layer index in prunelab. Strategies for dropping K of N:
    top             the last K
    bottom          the first K
    alternate-even  every other layer from the top, even in 1-based numbering (K=4 of 12: 12, 10, 8, 6)
    alternate-odd   every other layer from the top, odd in 1-based numbering (K=4 of 12: 11, 9, 7, 5)
    symmetric       K from the middle, keeping the top and bottom layers
    contribution    the K layers whose input and output [CLS] representations are most similar (cosine)
                    on a text sample, or every layer above a similarity threshold
The layers are physically removed: the model has fewer layers, its config says so, and it saves and loads
with plain ``from_pretrained``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..targets import architecture, base_model
from ..errors import InputError
STRATEGIES = ("top", "bottom", "alternate-even", "alternate-odd", "symmetric", "contribution")


def _stack(model: nn.Module) -> tuple[nn.Module, str, str]:
    """The base model, the path of its layer stack and the config attribute counting the layers."""
    arch = architecture(model)
    return base_model(model)[0], arch.layer_stack, arch.num_layers_attr


def num_layers(model: nn.Module) -> int:
    base, path, _ = _stack(model)
    return len(base.get_submodule(path))


def layers_to_drop(n: int, strategy: str, count: int) -> list[int]:
    """The 0-based layers a positional strategy drops from `n` layers (``contribution`` needs data: see
    ``contribution_scores``)."""
    if strategy not in STRATEGIES or strategy == "contribution":
        allowed = ", ".join(s for s in STRATEGIES if s != "contribution")
        raise InputError(f"unknown positional strategy {strategy!r}; allowed: {allowed} (contribution needs a model and text)")
    if not 0 < count < n:
        raise InputError(f"--count {count} must be between 1 and {n - 1} (the model has {n} layers and keeps at least one)")
    if strategy == "top":
        return list(range(n - count, n))
    if strategy == "bottom":
        return list(range(count))
    if strategy == "symmetric":
        start = (n - count) // 2
        return list(range(start, start + count))
    parity = 0 if strategy == "alternate-even" else 1
    candidates = [one_based - 1 for one_based in range(n, 0, -1) if one_based % 2 == parity]
    if count > len(candidates):
        raise InputError(f"{strategy} can drop at most {len(candidates)} of {n} layers; lower --count")
    return sorted(candidates[:count])


@torch.no_grad()
def contribution_scores(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 128) -> list[float]:
    """Per layer, the mean cosine similarity of its input and output [CLS] representation over `texts`.

    High similarity means the layer changes the sentence representation little. [CLS] is the first token,
    or the last non-padding one for XLNet (whose <cls> closes the sequence).
    """
    model.eval()
    device = next(model.parameters()).device
    base, _ = base_model(model)
    last = architecture(model).sentence_token == "last"
    sums, count = None, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = base(**enc, output_hidden_states=True).hidden_states  # n_layers + 1 tensors (batch, seq, hidden)
        if last and tokenizer.padding_side == "right":
            index = enc["attention_mask"].sum(1) - 1
            cls = [h[torch.arange(h.shape[0]), index] for h in hidden]
        else:
            cls = [h[:, -1] if last else h[:, 0] for h in hidden]
        sims = torch.stack([nn.functional.cosine_similarity(cls[i], cls[i + 1], dim=-1) for i in range(len(cls) - 1)])
        sums = sims.sum(1) if sums is None else sums + sims.sum(1)
        count += sims.shape[1]
    return (sums / count).tolist()


def choose_by_contribution(scores: list[float], count: int | None = None, min_similarity: float | None = None) -> list[int]:
    """The `count` most similar layers, or all with similarity above `min_similarity` (always keeping one)."""
    if (count is None) == (min_similarity is None):
        raise InputError("the contribution strategy takes either --count K or --threshold T")
    if min_similarity is not None:
        chosen = [i for i, s in enumerate(scores) if s > min_similarity]
    else:
        if not 0 < count < len(scores):
            raise InputError(f"--count {count} must be between 1 and {len(scores) - 1}")
        chosen = sorted(range(len(scores)), key=lambda i: -scores[i])[:count]
    if len(chosen) >= len(scores):
        raise InputError(f"threshold {min_similarity} would drop every layer; raise it")
    return sorted(chosen)


def drop_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """Remove `layers` (0-based) from `model` in place; update the config's layer count. Returns `model`."""
    base, path, attribute = _stack(model)
    stack = base.get_submodule(path)
    n = len(stack)
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers or len(set(layers)) >= n:
        raise InputError(f"cannot drop layers {layers} of a {n}-layer model; give 0-based indices 0..{n - 1}, keeping at least one")
    kept = [layer for i, layer in enumerate(stack) if i not in set(layers)]
    for new_index, layer in enumerate(kept):  # caches index layers by position
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent_path, _, name = path.rpartition(".")
    setattr(base.get_submodule(parent_path) if parent_path else base, name, nn.ModuleList(kept))
    setattr(model.config, attribute, len(kept))
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in set(layers)]
    return model


@torch.no_grad()
def inference_seconds(model: nn.Module, batch: dict, repeats: int = 5) -> float:
    """Median seconds of one forward pass of `batch` (after one warm-up)."""
    model.eval()
    model(**batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
