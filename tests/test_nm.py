"""N:M masks: exactly N kept in every group of M consecutive weights along each target's input dimension."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import prunelab
from conftest import CONFIGS, MODEL_TYPES, batch
from glue_fixtures import glue_dir, save_tiny  # noqa: F401
from prunelab import Pruner, PruningConfig, resolve_targets
from prunelab.cli import main
from prunelab.select import nm_masks
from prunelab.targets import input_axis

FFN_WIDTH = {"bert": "intermediate_size", "roberta": "intermediate_size", "electra": "intermediate_size",
             "distilbert": "hidden_dim", "xlnet": "d_inner"}


def nm_model(model_type: str) -> torch.nn.Module:
    """A tiny model whose every input dimension is a multiple of 4 (the shared tiny FFN is 37 wide)."""
    config = CONFIGS[model_type]()
    setattr(config, FFN_WIDTH[model_type], 40)
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config).eval()


def groups(tensor: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    moved = tensor.movedim(axis, -1)
    return moved.reshape(*moved.shape[:-1], -1, m)


@pytest.mark.parametrize("structure", ["2:4", "1:4"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_group_keeps_exactly_n_of_the_largest(model_type, structure):
    n, m = map(int, structure.split(":"))
    model = nm_model(model_type)
    dense = {t.name: model.get_parameter(t.param_name).detach().clone() for t in resolve_targets(model)}
    pruner = Pruner(model, PruningConfig(sparsity=1 - n / m, structure=structure))
    pruner.update_masks(1 - n / m, step=0)
    for t in pruner.targets:
        axis = input_axis(t)
        kept = groups(pruner.masks[t.name], axis, m)
        assert bool((kept.sum(-1) == n).all()), t.name
        magnitude = groups(dense[t.name].abs(), axis, m)
        weakest_kept = magnitude.masked_fill(~kept, float("inf")).min(-1).values
        strongest_pruned = magnitude.masked_fill(kept, float("-inf")).max(-1).values
        assert bool((weakest_kept >= strongest_pruned).all()), t.name
        live = model.get_parameter(t.param_name).detach()
        assert bool((live[~pruner.masks[t.name]] == 0).all())
    kept = sum(int(mask.sum()) for mask in pruner.masks.values())
    assert 1 - kept / sum(mask.numel() for mask in pruner.masks.values()) == pytest.approx(1 - n / m)
    with torch.no_grad():
        model(**batch(model_type))


def test_the_cubic_schedule_prunes_whole_weights_per_group_monotonely():
    model = nm_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.75, structure="1:4", schedule="cubic", end_step=12, update_every=1))
    seen, previous = [], None
    for step in range(14):
        pruner.step(step)
        mask = pruner.masks["encoder.layer.0.attention.self.query.weight"]
        kept = set(groups(mask, -1, 4).sum(-1).flatten().tolist())
        assert len(kept) == 1  # every group alike: exact N:M at each step
        seen.append(kept.pop())
        if previous is not None:
            assert bool((mask <= previous).all())  # pruned weights stay pruned
        previous = mask.clone()
    assert seen[0] == 4 and seen[-1] == 1 and sorted(set(seen), reverse=True) == [4, 3, 2, 1] and seen == sorted(seen, reverse=True)
    assert pruner.target_sparsity == 0.75


def test_ties_go_by_position_and_random_scores_follow_the_seed():
    w = torch.ones(2, 8)
    assert nm_masks({"w": w}, "2:4")["w"].tolist() == [[True, True, False, False] * 2] * 2
    a, b = (nm_masks({"w": torch.randn(4, 16)}, "2:4", criterion="random", seed=s)["w"] for s in (1, 2))
    assert not torch.equal(a, b) and bool((groups(a, -1, 4).sum(-1) == 2).all())


@pytest.mark.parametrize("kwargs, says", [
    (dict(sparsity=0.6, structure="2:4"), "structure 2:4 keeps 2 of every 4 weights: sparsity 0.5, not 0.6"),
    (dict(sparsity=0.5, structure="2:4", scope="global"), "it needs matrix scope, not global"),
    (dict(sparsity=0.5, structure="two:four"), "is not N:M"),
    (dict(sparsity=0.5, structure="5:4"), "need 0 <= N <= M"),
])
def test_bad_structures_are_refused(kwargs, says):
    with pytest.raises(ValueError, match=says):
        PruningConfig(**kwargs)


def test_an_input_dimension_not_a_multiple_of_m_is_named(tmp_path, capsys):
    source = save_tiny(tmp_path / "m")  # FFN 37 wide: FFN-out's input dimension is 37
    assert main(["prune", str(source), "--structure", "2:4", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "'encoder.layer.0.output.dense.weight': its input dimension (37) is not a multiple of 4" in err
    assert not (tmp_path / "p").exists()
    assert main(["prune", str(source), "--structure", "2:4", "--exclude", "ffn_out", "--compress",
                 "--out", str(tmp_path / "p")]) == 0
    loaded = prunelab.from_pretrained(tmp_path / "p")  # the compressed artifact keeps them exactly
    for name, mask in loaded.masks.items():
        assert bool((groups(mask, -1, 4).sum(-1) == 2).all()), name


def test_finetune_holds_n_m_masks(tmp_path, glue_dir):  # noqa: F811
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--structure", "1:4", "--exclude", "ffn_out", "--out", str(tmp_path / "p")]) == 0
    assert main(["finetune", str(tmp_path / "p"), "--task", "rte", "--data-dir", str(glue_dir), "--lr", "1e-2",
                 "--epochs", "1", "--batch-size", "4", "--max-seq-len", "16", "--save-model",
                 "--out", str(tmp_path / "ft")]) == 0
    tuned = prunelab.from_pretrained(tmp_path / "ft" / "model")
    for t in resolve_targets(tuned.model, exclude=["ffn_out", "pooler"]):
        weight = tuned.model.get_parameter(t.param_name).detach()
        assert bool((groups(weight != 0, -1, 4).sum(-1) <= 1).all()), t.name
    info = json.loads((tmp_path / "p" / "prunelab.json").read_text())
    assert info["config"]["structure"] == "1:4"


def test_pretrain_prunes_to_n_m_on_the_cubic_schedule(tmp_path):
    from glue_fixtures import WORDS, write_corpus

    config = CONFIGS["bert"]()
    config.intermediate_size = 40
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "m")
    vocab = tmp_path / "m" / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(tmp_path / "m")
    corpus = write_corpus(tmp_path / "corpus.txt", lines=60)
    assert main(["pretrain", str(tmp_path / "m"), "--corpus", str(corpus), "--steps", "6", "--sparsity", "0.5",
                 "--structure", "2:4", "--prune-every", "2", "--batch-size", "4", "--max-seq-len", "16",
                 "--out", str(tmp_path / "pre")]) == 0
    loaded = prunelab.from_pretrained(tmp_path / "pre" / "model")
    assert loaded.masks and all(bool((groups(m, -1, 4).sum(-1) == 2).all()) for m in loaded.masks.values())
    for name, mask in loaded.masks.items():
        weight = loaded.model.base_model.get_parameter(name).detach()
        assert bool((weight[~mask] == 0).all()), name
