import json
import math
import warnings

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from glue_fixtures import FOLDERS, glue_dir, save_tiny, write_corpus  # noqa: F401 (fixture)
from prunelab import load_masks
from prunelab.cli import main
from prunelab.data.glue import get_task
from prunelab.pipelines.finetune import FinetuneConfig, finetune
from prunelab.pipelines.pretrain import PretrainConfig, _warm_up_head, pretrain

FAST = dict(batch_size=4, max_seq_len=16, logging_steps=1)


def pretrain_cfg(tmp_path, model, **kwargs):
    corpus = write_corpus(tmp_path / "corpus.txt")
    base = dict(model=str(model), corpus=[str(corpus)], out=str(tmp_path / "pt"), sparsity=0.6, steps=8,
                prune_end=6, prune_every=2, dev_fraction=0.1, save_steps=4, **FAST)
    return PretrainConfig(**{**base, **kwargs})


def test_pretrain_prunes_on_schedule_and_saves_the_artifact(tmp_path):
    metrics = pretrain(pretrain_cfg(tmp_path, save_tiny(tmp_path / "m")))
    out = tmp_path / "pt"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["steps"] == 8 and metrics["fresh_mlm_head"] is False
    assert metrics["dev_loss_before"] > 0 and metrics["dev_loss_after"] > 0
    masks = load_masks(out / "model" / "masks.safetensors")
    model = AutoModelForMaskedLM.from_pretrained(out / "model")
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.6 * mask.numel())
        assert bool((model.bert.get_parameter(name)[~mask] == 0).all())
    logged = [e["pruning/target_sparsity"] for e in json.loads((out / "log_history.json").read_text())["log_history"] if "pruning/target_sparsity" in e]
    assert logged[0] < logged[2] < logged[5] == pytest.approx(0.6) == logged[-1]  # cubic ramp to step 6, then held
    assert {"config", "versions"} <= set(json.loads((out / "run_config.json").read_text()))


def test_pretrain_resume_after_a_crash_gives_the_same_result(tmp_path, monkeypatch):
    from prunelab.pruner import Pruner

    model = save_tiny(tmp_path / "m")
    whole = pretrain(pretrain_cfg(tmp_path, model, out=str(tmp_path / "whole")))
    cfg = pretrain_cfg(tmp_path, model, out=str(tmp_path / "crashed"))
    real_step = Pruner.step

    def crash_at_6(self, step):
        if step == 6:
            raise RuntimeError("simulated crash")
        return real_step(self, step)

    monkeypatch.setattr(Pruner, "step", crash_at_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(cfg)
    monkeypatch.setattr(Pruner, "step", real_step)
    crashed = tmp_path / "crashed"
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert not (crashed / "metrics.json").exists() and not (crashed / "model").exists()
    with pytest.raises(FileExistsError, match="pass --resume to continue"):
        pretrain(cfg)
    at_crash = load_masks(crashed / "checkpoints" / "checkpoint-4" / "masks.safetensors")
    assert json.loads((crashed / "checkpoints" / "checkpoint-4" / "pruner_state.json").read_text())["last_update_step"] == 4
    resumed = pretrain(cfg, resume=True)
    assert resumed["dev_loss_before"] == whole["dev_loss_before"] and resumed["steps"] == 8
    # The Trainer redraws the data order after restoring its RNG, so MLM masking (and the weights) differ
    # slightly after a resume; the pruning state itself continues exactly.
    assert resumed["dev_loss_after"] == pytest.approx(whole["dev_loss_after"], rel=1e-3)
    final = load_masks(crashed / "model" / "masks.safetensors")
    reference = load_masks(tmp_path / "whole" / "model" / "masks.safetensors")
    for name, mask in final.items():
        assert bool((mask <= at_crash[name]).all())  # pruned at step 4 stays pruned: the schedule continued
        assert int((~mask).sum()) == int((~reference[name]).sum()) == round(0.6 * mask.numel())
        assert float((mask == reference[name]).float().mean()) > 0.99


def test_model_without_mlm_head_warns_and_warms_the_head_up(tmp_path):
    model_dir = save_tiny(tmp_path / "bare", head="base")
    with pytest.warns(UserWarning, match="has no MLM head"):
        metrics = pretrain(pretrain_cfg(tmp_path, model_dir, head_warmup_steps=3))
    assert metrics["fresh_mlm_head"] is True and metrics["head_warmup_loss"] > 0


def test_head_warm_up_leaves_the_encoder_untouched(tmp_path):
    from prunelab.artifact import load_model
    from prunelab.data.corpus import read_corpus, to_blocks
    from prunelab.pipelines.pretrain import _collate
    from prunelab.pipelines.common import ListDataset
    from transformers import DataCollatorForLanguageModeling

    model_dir = save_tiny(tmp_path / "bare", head="base")
    cfg = pretrain_cfg(tmp_path, model_dir, head_warmup_steps=4)
    model, tokenizer = load_model(str(model_dir), model_class=AutoModelForMaskedLM)
    train = ListDataset([{"input_ids": b} for b in to_blocks(read_corpus(cfg.corpus), tokenizer, 16)])
    encoder = {n: p.clone() for n, p in model.bert.named_parameters()}
    head = {n: p.clone() for n, p in model.cls.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _warm_up_head(model, train, _collate(DataCollatorForLanguageModeling(tokenizer)), tmp_path / "w", cfg,
                      dict(seed=0, batch_size=4, logging_steps=1))
    assert all(torch.equal(p, encoder[n]) for n, p in model.bert.named_parameters())
    assert any(not torch.equal(p, head[n]) for n, p in model.cls.named_parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("folder", FOLDERS)
def test_finetune_every_task_reports_its_official_metrics(tmp_path, glue_dir, folder):  # noqa: F811
    task = get_task(folder)
    metrics = finetune(FinetuneConfig(model=str(save_tiny(tmp_path / "m")), task=folder, out=str(tmp_path / "ft"),
                                      data_dir=str(glue_dir), lrs=[1e-3], epochs=1, **FAST))
    assert set(metrics["dev"]) == set(task.dev_splits)
    for figures in metrics["dev"].values():
        accuracy = set() if task.is_regression else {"accuracy"}  # every classifier's, for the paper's metrics
        assert set(task.metrics) | {"score", "loss"} | accuracy == set(figures)
    assert metrics["train_loss_full"] > 0 and metrics["train_examples"] == 16


def pruned_artifact(tmp_path, sparsity=0.5):
    out = tmp_path / "pruned"
    assert main(["prune", str(save_tiny(tmp_path / "m")), "--sparsity", str(sparsity), "--out", str(out)]) == 0
    return out


def test_held_masks_keep_exactly_the_same_zeros(tmp_path, glue_dir):  # noqa: F811
    pruned = pruned_artifact(tmp_path)
    metrics = finetune(FinetuneConfig(model=str(pruned), task="sst2", out=str(tmp_path / "ft"), data_dir=str(glue_dir),
                                      lrs=[5e-2], epochs=2, save_model=True, **FAST))
    before, after = load_masks(pruned / "masks.safetensors"), load_masks(tmp_path / "ft" / "model" / "masks.safetensors")
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft" / "model")
    source = AutoModelForMaskedLM.from_pretrained(pruned)
    for name, mask in before.items():
        assert torch.equal(mask, after[name])
        weight = trained.bert.get_parameter(name)
        assert torch.equal(weight == 0, source.bert.get_parameter(name) == 0), name  # exactly the same zeros
        assert not torch.equal(weight, source.bert.get_parameter(name))  # and the rest trained
    assert metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)


def test_free_masks_regrow(tmp_path, glue_dir):  # noqa: F811
    pruned = pruned_artifact(tmp_path)
    metrics = finetune(FinetuneConfig(model=str(pruned), task="sst2", out=str(tmp_path / "ft"), data_dir=str(glue_dir),
                                      masks="free", lrs=[5e-2], epochs=2, **FAST))
    assert metrics["regime"] == "masks free (information deletion)"
    assert metrics["sparsity"] < 0.05  # zeros were the start, not a constraint


def test_lr_grid_picks_the_best_and_resume_never_redoes_a_finished_lr(tmp_path, glue_dir):  # noqa: F811
    cfg = dict(model=str(save_tiny(tmp_path / "m")), task="mrpc", out=str(tmp_path / "ft"), data_dir=str(glue_dir),
               epochs=1, **FAST)
    first = finetune(FinetuneConfig(lrs=[1e-6], **cfg))
    finished = (tmp_path / "ft" / "lr-1e-06" / "result.json").read_text()
    metrics = finetune(FinetuneConfig(lrs=[1e-6, 3e-2, 1e-3], **cfg), resume=True)
    assert (tmp_path / "ft" / "lr-1e-06" / "result.json").read_text() == finished
    assert metrics["runs"][0] == first["runs"][0]
    scores = {r["lr"]: r["dev_score"] for r in metrics["runs"]}
    assert len(scores) == 3 and metrics["best_lr"] == max(scores, key=scores.get)
    assert metrics["dev_score"] == max(scores.values())
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["best_lr"] == metrics["best_lr"]


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_pruned_after_fine_tuning(tmp_path, glue_dir, criterion):  # noqa: F811
    metrics = finetune(FinetuneConfig(model=str(save_tiny(tmp_path / "m")), task="rte", out=str(tmp_path / "ft"),
                                      data_dir=str(glue_dir), lrs=[1e-3], prune_after_epochs=1, epochs=1, sparsity=0.7,
                                      criterion=criterion, save_model=True, **FAST))
    run = metrics["runs"][0]
    assert run["steps"] == 8 and metrics["sparsity"] >= 0.7 - 2e-3
    history = json.loads((tmp_path / "ft" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    sparsity = [(e["step"], e["pruning/sparsity"]) for e in history if "pruning/sparsity" in e]
    assert all(s < 0.05 for step, s in sparsity if step < 4) and all(s == pytest.approx(0.7, abs=2e-3) for step, s in sparsity if step >= 4)
    info = json.loads((tmp_path / "ft" / "model" / "prunelab.json").read_text())
    assert info["config"]["criterion"] == criterion and info["config"]["start_step"] == 4


def test_finetune_cli_and_its_errors(tmp_path, glue_dir, capsys):  # noqa: F811
    model = str(save_tiny(tmp_path / "m"))
    assert main(["finetune", model, "--task", "STS-B", "--data-dir", str(glue_dir), "--lr", "1e-3", "--epochs", "1",
                 "--batch-size", "4", "--max-seq-len", "16", "--out", str(tmp_path / "ok")]) == 0
    assert "stsb" in capsys.readouterr().out
    bad = [
        (["--task", "sst"], "unknown GLUE task 'sst'"),
        (["--task", "rte", "--lr", "fast"], "--lr 'fast' is not a comma-separated list"),
        (["--task", "rte", "--sparsity", "0.5"], "--prune-after-epochs and --sparsity go together"),
        (["--task", "rte", "--prune-after-epochs", "1", "--sparsity", "1.5"], "sparsity 1.5 is outside [0, 1]"),
        (["--task", "qqp", "--data-dir", str(tmp_path / "nowhere")], "QQP/train.tsv not found"),
    ]
    for args, message in bad:
        code = main(["finetune", model, "--data-dir", str(glue_dir), "--out", str(tmp_path / "bad"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    assert main(["finetune", model, "--task", "rte", "--data-dir", str(glue_dir), "--out", str(tmp_path / "ok")]) == 2
    assert "is not empty; pass --resume" in capsys.readouterr().err


def test_pretrain_cli_errors(tmp_path, capsys):
    model = str(save_tiny(tmp_path / "m"))
    corpus = str(write_corpus(tmp_path / "c.txt"))
    for args, message in [
        (["--steps", "10", "--sparsity", "0.5", "--prune-end", "20"], "--prune-end 20 is beyond --steps 10"),
        (["--steps", "10", "--sparsity", "-1"], "sparsity -1.0 is outside"),
        (["--steps", "0", "--sparsity", "0.5"], "--steps 0 must be >= 1"),
    ]:
        assert main(["pretrain", model, "--corpus", corpus, "--out", str(tmp_path / "o"), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["pretrain", model, "--corpus", str(tmp_path / "none.txt"), "--steps", "2", "--sparsity", "0.5",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "none.txt not found" in capsys.readouterr().err
    assert main(["pretrain", model, "--corpus", corpus, "--steps", "2", "--sparsity", "0.5", "--max-seq-len", "512",
                 "--out", str(tmp_path / "o3")]) == 2  # the dev split too short for one block: an input error, not a crash
    assert "0 dev blocks of 512 tokens; provide more text" in capsys.readouterr().err


def torchrun(*argv) -> "subprocess.CompletedProcess":
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m prunelab ARGV`` (CPU, gloo): standalone
    binds a free port itself, so no other process (e.g. a Ray instance) can take it between choosing and binding."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "prunelab", *map(str, argv)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def torchrun_script(script, *argv):
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 SCRIPT ARGV``, as ``torchrun`` above."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), *map(str, argv)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
if os.environ["RANK"] == "1" and sys.argv[3] == "late":  # this rank starts late: once the main process's run_config.json
    config = Path(sys.argv[1]) / "run_config.json"       # is over 1.5 s old (the old code then waited for a newer one
    deadline = time.monotonic() + 8                       # for ever), or never if the main process waits for this rank
    while time.monotonic() < deadline and not (config.is_file() and time.time() - config.stat().st_mtime > 1.5):
        time.sleep(0.05)
from prunelab.pipelines.common import RunOptions, prepare_run_dir
try:
    out, finished = prepare_run_dir(RunOptions(model="m", out=sys.argv[1]), overwrite=False, resume=sys.argv[2] == "resume")
    said = f"ok {finished}"
except Exception as error:
    said = f"{type(error).__name__} {error}"
Path(sys.argv[4], "rank" + os.environ["RANK"]).write_text(said)  # a file per rank: their stdout lines interleave
"""


def test_ranks_follow_the_main_process_however_late_they_start(tmp_path):
    """Two ranks launched by torchrun (RANK, WORLD_SIZE, its own rendezvous port). A rank that starts well after the
    main process prepared the run directory still follows it (it once waited for a newer file until it timed out:
    the hang of a loaded CI machine); it gets the main process's resumed metrics, and its error."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)

    def launch(mode, start):
        said = tmp_path / f"said-{mode}-{start}"
        said.mkdir()
        torchrun_script(script, tmp_path / "run", mode, start, said)
        return [(said / f"rank{r}").read_text() for r in (0, 1)]

    assert launch("fresh", "late") == ["ok None", "ok None"]
    assert (tmp_path / "run" / "run_config.json").is_file()
    refused = launch("fresh", "together")  # not empty, no --resume: the main process refuses, and the other rank with it
    assert refused[0] == refused[1] and refused[0].startswith("OutputExistsError output directory") and "--resume" in refused[0]
    (tmp_path / "run" / "metrics.json").write_text('{"dev_score": 0.5}')
    assert launch("resume", "together") == ["ok {'dev_score': 0.5}"] * 2  # the finished run's metrics, read by the main process


def test_torchrun_data_parallel_run_splits_the_data_and_writes_once(tmp_path, glue_dir):  # noqa: F811
    model = save_tiny(tmp_path / "m")
    pruned = tmp_path / "pruned"
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(pruned)]) == 0
    out = tmp_path / "ddp"
    result = torchrun("finetune", pruned, "--task", "rte", "--data-dir", glue_dir, "--lr", "1e-3", "--epochs", "1",
                      "--batch-size", "4", "--max-seq-len", "16", "--out", out, "--save-model")
    assert result.stdout.count("rte (masks held (pruned))") == 1  # one summary, from the main process
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"][0]["steps"] == 2  # 16 examples / (2 ranks x batch 4): the data was split
    assert metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)
    assert 0.3 < metrics["train_loss_full"] < 1.5  # a mean loss, not multiplied by the world size
    tuned = AutoModelForSequenceClassification.from_pretrained(out / "model")
    for name, mask in load_masks(pruned / "masks.safetensors").items():
        assert bool((tuned.bert.get_parameter(name)[~mask] == 0).all())


def test_torchrun_step_budget_counts_the_ranks(tmp_path, glue_dir):  # noqa: F811
    """16 examples on 2 ranks at batch 4 are 2 optimizer steps per epoch, not 4: pruning after 1 of 2 epochs
    happens at step 2 (half-way), and adapt's sparsity ramp over all of training ends at the last step."""
    model = save_tiny(tmp_path / "m")
    common = ("--task", "rte", "--data-dir", glue_dir, "--lr", "1e-3", "--batch-size", "4", "--max-seq-len", "16",
              "--logging-steps", "1")
    torchrun("finetune", model, *common, "--epochs", "1", "--prune-after-epochs", "1", "--sparsity", "0.5",
             "--out", tmp_path / "after")
    run = json.loads((tmp_path / "after" / "metrics.json").read_text())["runs"][0]
    history = json.loads((tmp_path / "after" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    sparsity = {e["step"]: e["pruning/sparsity"] for e in history if "pruning/sparsity" in e}
    assert run["steps"] == 4 and sparsity[1] == 0.0 and sparsity[2] == pytest.approx(0.5, abs=2e-3)

    torchrun("adapt", model, *common, "--epochs", "2", "--sparsity", "0.5", "--ramp", "1", "--out", tmp_path / "adapt")
    history = json.loads((tmp_path / "adapt" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    target = {e["step"]: e["adapt/target_sparsity"] for e in history if "adapt/target_sparsity" in e}
    assert max(target) == 4 and target[4] == pytest.approx(0.5)  # the ramp ends at the last real step
    assert target[2] == pytest.approx(0.5 * (1 - 0.5**3))  # half-way along the cubic


def test_finetune_loss_is_divided_by_gradient_accumulation_once(tmp_path, glue_dir):  # noqa: F811
    """BERT's forward takes **kwargs, so the Trainer would take its per-batch mean loss as already scaled for
    accumulation; finetune tells it otherwise. The logged loss of a fresh binary head is then about ln 2, not k·ln 2."""
    model = str(save_tiny(tmp_path / "m"))
    logged = {}
    for accum in (1, 4):
        out = tmp_path / f"ft{accum}"
        finetune(FinetuneConfig(model=model, task="SST-2", out=str(out), data_dir=str(glue_dir), lrs=[1e-9], epochs=1,
                                batch_size=2, grad_accum=accum, logging_steps=1, progress=False))
        history = json.loads((out / "lr-1e-09" / "log_history.json").read_text())["log_history"]
        logged[accum] = [h["loss"] for h in history if "loss" in h][0]
    assert logged[1] == pytest.approx(math.log(2), abs=0.1) and logged[4] == pytest.approx(math.log(2), abs=0.1)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert", "xlnet"])
def test_masked_token_loss_equals_the_models_own_loss_and_gradients(model_type):
    """Pre-training computes logits at the masked positions only; the loss and every gradient are the model's own."""
    from conftest import batch, tiny_model
    from transformers import TrainingArguments

    from prunelab.pipelines.pretrain import MaskedTokensTrainer

    model = tiny_model(model_type, "mlm")
    inputs = batch(model_type, size=3, length=10, seed=1)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2::4] = inputs["input_ids"][:, 2::4]
    trainer = MaskedTokensTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[]))
    reference = model(**inputs, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss, outputs = trainer.compute_loss(model, {**inputs, "labels": labels}, return_outputs=True)
    loss.backward()
    assert outputs.logits.shape == (int((labels != -100).sum()), model.config.vocab_size)  # masked positions only
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    assert not model.get_output_embeddings()._forward_pre_hooks  # the hook is gone after the forward
    total = trainer.compute_loss(model, {**inputs, "labels": labels}, num_items_in_batch=2 * int((labels != -100).sum()))
    assert total.item() == pytest.approx(reference.item() / 2, rel=1e-5) and trainer.loss_is_scaled_for_ga


def test_training_batches_are_grouped_by_length_unless_asked_not_to(tmp_path, glue_dir):  # noqa: F811
    from prunelab.pipelines.grid import GlueOptions, by_length

    cfg = dict(model="m", out="o", task="SST-2")
    assert GlueOptions(**cfg).trainer_kwargs()["train_sampling_strategy"] == "group_by_length"
    assert GlueOptions(**cfg, group_by_length=False).trainer_kwargs()["train_sampling_strategy"] == "random"
    rows = [{"input_ids": [0] * n, "labels": n} for n in (5, 2, 9, 2)]
    from prunelab.pipelines.common import ListDataset

    assert [r["labels"] for r in by_length(ListDataset(rows))] == [2, 2, 5, 9]
    out = tmp_path / "ft"  # the CLI flag reaches the run's options
    assert main(["finetune", str(save_tiny(tmp_path / "m")), "--task", "SST-2", "--data-dir", str(glue_dir), "--lr", "1e-3",
                 "--epochs", "1", "--batch-size", "4", "--max-seq-len", "16", "--no-group-by-length", "--out", str(out)]) == 0
    assert json.loads((out / "run_config.json").read_text())["config"]["group_by_length"] is False
