"""Soft movement pruning in pretrain and finetune (pipelines.soft_movement), and the pieces every path shares: tied
weights masked alike, the penalty counted once per optimizer step, bad combinations refused in one line.

Each pipeline test asserts the held-mask guarantees on the saved run: exactly the target's count pruned over all
targets, pruned weights +0.0 bit for bit, the masks file consistent with them, plain transformers loads it, the
report's sparsity_at_end_of_training, and masks unlike magnitude's on the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from conftest import MODEL_TYPES, batch, tiny_model
from glue_fixtures import WORDS, glue_dir, save_tiny, write_corpus  # noqa: F401 (fixture)
from prunelab import resolve_targets
from prunelab.cli import main
from prunelab.errors import InputError
from prunelab.integrations.hf_trainer import MaskLearnerLoss
from prunelab.masks_io import load_masks
from prunelab.methods.learned_masks import MaskLearner
from prunelab.pipelines.finetune import FinetuneConfig, finetune
from prunelab.pipelines.pretrain import PretrainConfig, pretrain
from prunelab.select import compute_masks, num_to_prune

FAST = dict(batch_size=4, max_seq_len=16, logging_steps=1, progress=False)


def save_tiny_mlm(path: Path, model_type: str) -> Path:
    """A tiny MLM of `model_type` with the fixtures' WordPiece tokenizer (BERT's: save_tiny)."""
    if model_type == "bert":
        return save_tiny(path)
    tiny_model(model_type, "mlm").save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(path)
    return path


def check_held_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], sparsity: float) -> None:
    """Exactly round(s·N) pruned over all targets, each pruned weight +0.0 (sign bit clear), the kept ones (almost
    all) not zero, the masks' names the model's targets."""
    targets = resolve_targets(model)
    assert set(masks) == {t.name for t in targets}
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    kept_zeros = 0
    for t in targets:
        weight = model.get_parameter(t.param_name).detach()
        pruned = weight[~masks[t.name]]
        assert bool((pruned == 0).all()) and not bool(torch.signbit(pruned).any()), t.name
        kept_zeros += int((weight[masks[t.name]] == 0).sum())
    assert kept_zeros < 0.01 * total  # e.g. [PAD]'s embedding row


def differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The fraction of weights the two mask sets decide differently."""
    return sum(int((a[n] != b[n]).sum()) for n in a) / sum(m.numel() for m in a.values())


# -- the learner ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_tied_decoder_sees_the_masked_embeddings_and_stays_tied(model_type):
    model = tiny_model(model_type, "mlm")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    learner = MaskLearner(model, 0.5, train_weights=True, regularizer="sigmoid")
    name = next(t.name for t in learner.targets if t.kind == "embeddings")
    with torch.no_grad():
        learner.scores()[name].copy_(torch.randn(learner.scores()[name].shape))  # about half the scores <= 0
    keep = learner.scores()[name] > 0
    dense = learner.frozen_weights()[name]
    assert torch.equal(model.get_output_embeddings().weight, dense * keep)  # the decoder's weight, masked alike
    assert torch.equal(model.get_input_embeddings().weight, dense * keep)
    masks = learner.finish(exact=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied again, the same parameter
    assert bool((model.get_input_embeddings().weight[~masks[name]] == 0).all())
    assert not any(s.requires_grad for s in learner.parameters())  # the scores' training is over
    model(**batch(model_type))  # a plain model again


def test_scores_start_a_margin_above_the_threshold_that_grows_with_the_ramp():
    """Starting at 0.01 the masks flipped on a few steps' noise and MiniLM ended at chance (docs/paper.md): the scores
    start where about 40% of the ramp's Adam steps, scores_lr each, are needed to bring one to the threshold."""
    from prunelab.pipelines.soft_movement import SoftMovementOptions, initial_score, start

    assert initial_score(1e-2, 100) == pytest.approx(0.4) and initial_score(1e-2, 1000) == pytest.approx(4.0)
    assert initial_score(1e-2, 1) == 0.01  # never below adapt's start
    learner, optimizer, _ = start(tiny_model("bert", "cls"), SoftMovementOptions(scores_lr=1e-2), sparsity=0.5,
                                  lr=1e-3, weight_decay=0.0, ramp_start=10, ramp_end=110, fix_at=110, seed=0)
    scores = torch.cat([s.detach().flatten() for s in learner.parameters()])
    assert float(scores.mean()) == pytest.approx(0.4, abs=1e-3) and learner.realized_sparsity() == 0.0
    assert optimizer.param_groups[0]["lr"] == 1e-2


def test_the_penalty_counts_once_per_optimizer_step(tmp_path):
    """A loss the Trainer does not divide by the accumulation steps gets the penalty's share per batch."""
    model = tiny_model("bert", "cls")
    learner = MaskLearner(model, 0.5, penalty=1e-3, train_weights=True, regularizer="sigmoid")

    class PenaltyTrainer(MaskLearnerLoss, transformers.Trainer):
        pass

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    inputs = {**batch("bert"), "labels": torch.tensor([0, 1, 0, 1])}

    def loss(trainer, training: bool = True) -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout each time
        return trainer.compute_loss(model.train(training), dict(inputs))

    plain = loss(transformers.Trainer(model=model, args=args))
    trainer = PenaltyTrainer(model=model, args=args, learner=learner)
    trainer.current_gradient_accumulation_steps = 4
    assert float(learner.penalty().detach()) > 0
    for scaled, share in ((False, 1.0), (True, 0.25)):
        trainer.loss_is_scaled_for_ga = scaled
        assert float((loss(trainer) - plain).detach()) == pytest.approx(share * float(learner.penalty().detach()), rel=1e-4)
    assert torch.equal(loss(trainer, training=False), loss(transformers.Trainer(model=model, args=args), training=False))


# -- pretrain ---------------------------------------------------------------------------------------


def pretrain_cfg(tmp_path: Path, model: Path, out: str, **kwargs) -> PretrainConfig:
    base = dict(model=str(model), corpus=[str(write_corpus(tmp_path / "corpus.txt"))], out=str(tmp_path / out),
                sparsity=0.5, steps=8, prune_end=6, dev_fraction=0.1, lr=1e-3, criterion="soft-movement", **FAST)
    return PretrainConfig(**{**base, **kwargs})


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_pretrain_by_soft_movement_holds_exact_masks_that_plain_transformers_loads(tmp_path, model_type):
    model_dir = save_tiny_mlm(tmp_path / "m", model_type)
    cfg = pretrain_cfg(tmp_path, model_dir, "soft")
    metrics = pretrain(cfg)
    out = tmp_path / "soft"
    assert metrics["steps"] == 8 and metrics["target_sparsity"] == 0.5
    assert 0.0 < metrics["sparsity_at_end_of_training"] < 1.0  # what the learned threshold S > 0 had pruned at step 6
    assert json.loads((out / "model" / "prunelab.json").read_text())["pretrain"]["sparsity_at_end_of_training"] \
        == metrics["sparsity_at_end_of_training"]
    masks = load_masks(out / "model" / "masks.safetensors")
    model = transformers.AutoModelForMaskedLM.from_pretrained(out / "model")  # plain transformers, no parametrization
    check_held_masks(model, masks, 0.5)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    learned = {e["step"]: e["adapt/target_sparsity"] for e in history if "adapt/target_sparsity" in e}
    held = {e["step"]: e["pruning/sparsity"] for e in history if "pruning/sparsity" in e}
    assert max(learned) == 5 and learned[1] < learned[3] < learned[5] < 0.5  # the target rising (cubic) to step 6
    assert min(held) == 6 and max(held) == 8 and len(set(held.values())) == 1  # fixed at step 6, then held
    recorded = json.loads((out / "run_config.json").read_text())["config"]
    assert (recorded["criterion"], recorded["scores_lr"], recorded["penalty"], recorded["band"]) == ("soft-movement", 1e-2, 1e-4, 0.01)

    if model_type != "bert":  # the rest once: magnitude's masks on the same run, and resumes
        return
    pretrain(pretrain_cfg(tmp_path, model_dir, "magnitude", criterion="magnitude", scope="global"))
    assert differ(masks, load_masks(tmp_path / "magnitude" / "model" / "masks.safetensors")) > 0.05  # the scores chose

    for change in ({"criterion": "magnitude"}, {"scores_lr": 1e-3}):  # a resume continues the same run or refuses
        with pytest.raises(InputError, match=f"{next(iter(change))}.* differ"):
            pretrain(pretrain_cfg(tmp_path, model_dir, "soft", **change), resume=True)
    assert pretrain(cfg, resume=True)["already_finished"] is True


# -- finetune ---------------------------------------------------------------------------------------


def test_finetune_pruned_after_fine_tuning_by_soft_movement(tmp_path, glue_dir):  # noqa: F811
    """The scores are learned over the first epoch, the masks fixed exactly at its end and held for the next."""
    model_dir = save_tiny(tmp_path / "m", head="base")
    run = dict(model=str(model_dir), task="rte", data_dir=str(glue_dir), lrs=[1e-3], prune_after_epochs=1, epochs=1,
               sparsity=0.5, save_model=True, **FAST)
    metrics = finetune(FinetuneConfig(out=str(tmp_path / "soft"), criterion="soft-movement", **run))
    result = metrics["runs"][0]
    assert result["steps"] == 8 and result["target_sparsity"] == 0.5 and 0.0 < result["sparsity_at_end_of_training"] < 1.0
    assert metrics["regime"] == "pruned after 1 epochs of fine-tuning (soft-movement)"
    out = tmp_path / "soft" / "model"
    masks = load_masks(out / "masks.safetensors")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    check_held_masks(model, masks, 0.5)
    history = json.loads((tmp_path / "soft" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    assert max(e["step"] for e in history if "adapt/sparsity" in e) == 3  # learned over the first epoch's 4 steps
    exact = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    held = {e["step"]: e["pruning/sparsity"] for e in history if "pruning/sparsity" in e}
    assert min(held) == 4 and max(held) == 8 and set(held.values()) == {exact}  # fixed at step 4, held to the end
    assert json.loads((out / "prunelab.json").read_text())["config"]["criterion"] == "soft-movement"

    finetune(FinetuneConfig(out=str(tmp_path / "magnitude"), criterion="magnitude", scope="global", **run))
    assert differ(masks, load_masks(tmp_path / "magnitude" / "model" / "masks.safetensors")) > 0.05


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "0.5", "--structure", "2:4"],
     "--structure 2:4 does not apply to soft-movement"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "0.5", "--schedule", "oneshot"],
     "--schedule oneshot does not apply to soft-movement"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "0.5", "--scope", "global"],
     "--scope global does not apply"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "1"], "--sparsity 1.0 must be a number >= 0 and < 1"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "0.5", "--scores-lr", "0"],
     "--scores-lr 0.0 must be a number > 0"),
    (["pretrain", "{m}", "--corpus", "{c}", "--steps", "4", "--sparsity", "0.5", "--band", "-1"],
     "--band -1.0 must be a number >= 0"),
    (["finetune", "{m}", "--task", "rte", "--data-dir", "{g}"], "pass --prune-after-epochs N --sparsity S"),
    (["finetune", "{p}", "--task", "rte", "--data-dir", "{g}", "--prune-after-epochs", "1", "--sparsity", "0.5"],
     "is a pruned artifact; soft-movement learns its masks from a dense model"),
    (["finetune", "{m}", "--task", "rte", "--data-dir", "{g}", "--prune-after-epochs", "1", "--sparsity", "0.5",
      "--penalty", "-1"], "--penalty -1.0 must be a number >= 0"),
])
def test_soft_movement_refuses_what_cannot_work_in_one_line_and_writes_nothing(tmp_path, glue_dir, capsys, argv, says):  # noqa: F811
    model = save_tiny(tmp_path / "m")
    names = {"m": str(model), "o": str(tmp_path / "out"), "g": str(glue_dir), "c": str(write_corpus(tmp_path / "c.txt")),
             "p": str(tmp_path / "pruned")}
    if "{p}" in argv:
        assert main(["prune", str(model), "--sparsity", "0.5", "--out", names["p"]]) == 0
    capsys.readouterr()
    assert main([a.format(**names) for a in argv] + ["--criterion", "soft-movement", "--out", names["o"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", [t for t in MODEL_TYPES if t not in ("bert", "roberta")])
@pytest.mark.parametrize("criterion", ["movement", "soft-movement"])
def test_movement_criteria_on_every_other_architecture(tmp_path, glue_dir, model_type, criterion):  # noqa: F811
    """Both movement criteria on the architectures the tests above leave out (finetune --prune-after-epochs, which
    XLNet takes too): exact held masks that plain transformers loads, chosen by the scores, not by magnitude."""
    model_dir = save_tiny_mlm(tmp_path / "m", model_type)
    finetune(FinetuneConfig(model=str(model_dir), task="rte", data_dir=str(glue_dir), lrs=[1e-3], prune_after_epochs=1,
                            epochs=1, sparsity=0.5, criterion=criterion, save_model=True, out=str(tmp_path / "run"), **FAST))
    masks = load_masks(tmp_path / "run" / "model" / "masks.safetensors")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    if criterion == "soft-movement":
        check_held_masks(model, masks, 0.5)  # one selection over all targets
    else:
        for name, mask in masks.items():  # one per matrix
            assert int((~mask).sum()) == num_to_prune(0.5, mask.numel()), name
            assert bool((model.base_model.get_parameter(name).detach()[~mask] == 0).all()), name
    dense = transformers.AutoModel.from_pretrained(model_dir)
    by_magnitude = compute_masks({n: dense.get_parameter(n).detach() for n in masks}, 0.5)
    assert any(not torch.equal(masks[n], by_magnitude[n]) for n in masks)
