"""The learning-rate grid that finetune, adapt and distill-prune share: one GLUE task, one run per learning rate
from the same starting weights, each evaluated on the dev sets and the whole training set, the best one kept.

The driver (``run_grid``) checks and reads the data, creates the run directory, and for each learning rate
either reads back the finished ``lr-<lr>/result.json`` (never redone) or calls the pipeline's ``run_one``, then
saves that run's model, log history and result; ``<out>/metrics.json`` summarises the best learning rate.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from transformers import AutoModelForSequenceClassification, Trainer, set_seed

from ..artifact import load_config, load_model, load_tokenizer, save_artifact
from ..config import label, versions
from ..data.glue import Task, compute_metrics, get_task, load_task
from ..io import read_json
from .common import (METRICS_FILE, ListDataset, RunOptions, check_number, is_main_process, prepare_run_dir, run_log,
                     write_json_once)
from ..errors import InputError

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass(kw_only=True)
class GlueOptions(RunOptions):
    """Options of a learning-rate grid on a GLUE task (see ``RunOptions`` for the rest).

    Attributes:
        task: GLUE task name (``SST-2``, ``sst2``, ...).
        data_dir: GLUE data in the download_glue_data.py layout; ``None`` reads nyu-mll/glue from the hub.
        lrs: The learning-rate grid; the best dev score is reported.
        epochs: Training epochs of each run.
        max_train_samples: Subsample the training set to this many examples (seeded).
        save_model: Keep the best learning rate's model in ``<out>/model``.
        warmup_ratio: Fraction of the steps the learning rate warms up over.
        group_by_length: Train on batches of similar length (the Trainer's ``group_by_length`` sampler: random
            batches, each drawn from a run of examples sorted by length), which pads far less than plain random
            batches (SST-2: 13 tokens a batch instead of 35).
    """

    task: str
    data_dir: str | None = None
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 4e-5, 5e-5])
    epochs: float = 3.0
    max_train_samples: int | None = None
    save_model: bool = False
    warmup_ratio: float = 0.1
    group_by_length: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        get_task(self.task)
        if not isinstance(self.lrs, list) or not self.lrs:
            raise InputError(f"--lr {self.lrs} must be a comma-separated list of positive learning rates, e.g. 2e-5,3e-5")
        for lr in self.lrs:
            check_number("--lr", lr, low=0, low_open=True)
        check_number("--epochs", self.epochs, low=0, low_open=True)
        if self.max_train_samples is not None:
            check_number("--max-train-samples", self.max_train_samples, low=1, integer=True)
        check_number("--warmup-ratio", self.warmup_ratio, low=0, high=1, high_open=True)

    def trainer_kwargs(self) -> dict:
        return {**super().trainer_kwargs(),
                "train_sampling_strategy": "group_by_length" if self.group_by_length else "random"}


class RunOutcome(NamedTuple):
    """What a pipeline's ``run_one`` returns: the result (``lr``, ``dev``, ``dev_score``, ``train_loss_full``,
    ``sparsity``, ``steps`` and its own figures), the Trainer it ran, and what to save as the run's model
    (``(model, tokenizer, masks, info)``) when ``save_model`` is set."""

    result: dict
    trainer: Trainer
    artifact: tuple


RunOne = Callable[[float, dict, object, Path], RunOutcome]


def run_grid(cfg: GlueOptions, run_one: RunOne, summary: Callable[[dict], dict], *, resume: bool, overwrite: bool,
             tokenizer=None) -> dict:
    """Run `run_one(lr, data, tokenizer, run_dir)` for each learning rate of `cfg` and return what
    ``<out>/metrics.json`` holds: ``summary(best result)`` and the best run's figures, every run, timings.

    The data (and the tokenizer: `tokenizer`, else ``cfg.tokenizer``'s or ``cfg.model``'s) is read before the
    run directory is created, so bad input writes nothing.
    """
    task = get_task(cfg.task)
    data, tokenizer = load_data(cfg, task, tokenizer)
    out, finished = prepare_run_dir(cfg, overwrite=overwrite, resume=resume)
    if finished is not None and all((out / f"lr-{label(lr, 'g')}" / RESULT_FILE).is_file() for lr in cfg.lrs) \
            and {r["lr"] for r in finished["runs"]} == set(cfg.lrs):
        logger.warning("%s already finished; nothing to do", out)
        return {**finished, "already_finished": True}
    with run_log(out):
        started = time.time()
        runs = [_run_or_reuse(cfg, run_one, lr, data, tokenizer, out / f"lr-{label(lr, 'g')}") for lr in cfg.lrs]
        best = max(runs, key=lambda r: r["dev_score"])
        if cfg.save_model and is_main_process():
            _keep_only_best_model(out, runs, best)
        metrics = {"task": task.name, **summary(best), "best_lr": best["lr"], "dev": best["dev"],
                   "dev_score": best["dev_score"], "train_loss_full": best["train_loss_full"], "sparsity": best["sparsity"],
                   "runs": runs, "train_examples": len(data["train"]),
                   "dev_examples": {split: len(data[split]) for split in task.dev_splits}, "seconds": time.time() - started,
                   "versions": versions()}
        write_json_once(out / METRICS_FILE, metrics)
        return metrics


def _run_or_reuse(cfg: GlueOptions, run_one: RunOne, lr: float, data: dict, tokenizer, run_dir: Path) -> dict:
    if (run_dir / RESULT_FILE).is_file():  # finished earlier: never redone
        logger.info("lr %g already finished in %s", lr, run_dir)
        return read_json(run_dir / RESULT_FILE, "result file")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result, trainer, (model, model_tokenizer, masks, info) = run_one(lr, data, tokenizer, run_dir)
    result["seconds"] = time.time() - started
    if cfg.save_model and is_main_process():
        save_artifact(model, model_tokenizer, masks, info, run_dir / "model", overwrite=True)
        result["model"] = str(run_dir / "model")
    write_json_once(run_dir / "log_history.json", {"log_history": trainer.state.log_history})
    write_json_once(run_dir / RESULT_FILE, result)
    if is_main_process():  # the run is done; its result is what resumes use
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def _keep_only_best_model(out: Path, runs: list[dict], best: dict) -> None:
    """Move the best learning rate's model to ``<out>/model`` and delete the others' (a resumed run moved it already)."""
    target = out / "model"
    if Path(best["model"]).exists():
        if target.exists():
            shutil.rmtree(target)
        shutil.move(best["model"], target)
    best["model"] = str(target)
    for run in runs:
        if run is not best and run.get("model") and Path(run["model"]).exists():
            shutil.rmtree(run["model"])
            run["model"] = None


# -- data, model and evaluation ---------------------------------------------------------------------


def encode(examples, tokenizer, max_seq_len: int, regression: bool) -> ListDataset:
    """Tokenize (text_a, text_b, label) examples once, truncated to `max_seq_len`; padding is per batch."""
    a = [e[0] for e in examples]
    b = [e[1] for e in examples] if examples[0][1] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_seq_len)
    labels = [float(e[2]) if regression else int(e[2]) for e in examples]
    return ListDataset([{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(len(examples))])


def subsample(examples: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(examples):
        return examples
    order = np.random.default_rng(seed).permutation(len(examples))[:n]
    return [examples[i] for i in sorted(order)]


def load_data(cfg: GlueOptions, task: Task, tokenizer=None) -> tuple[dict[str, ListDataset], object]:
    """The task's splits tokenized (train subsampled, seeded), and the tokenizer: `tokenizer`, else
    ``cfg.tokenizer``'s or ``cfg.model``'s."""
    splits = load_task(task, cfg.data_dir)
    splits["train"] = subsample(splits["train"], cfg.max_train_samples, cfg.seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else load_model(cfg.model)[1]
        check_vocabulary(tokenizer, cfg)
    if tokenizer is None:
        raise InputError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    return {name: encode(rows, tokenizer, cfg.max_seq_len, task.is_regression) for name, rows in splits.items()}, tokenizer


def check_vocabulary(tokenizer, cfg: RunOptions) -> None:
    """A tokenizer with more entries than ``cfg.model`` has embeddings would index past them in the forward pass."""
    vocab = int(getattr(load_config(cfg.model)[1], "vocab_size", 0) or 0)
    if tokenizer is not None and vocab and len(tokenizer) > vocab:
        raise InputError(f"--tokenizer {cfg.tokenizer or cfg.model!r} has {len(tokenizer)} entries, but model {cfg.model!r} "
                         f"has {vocab} embeddings; pass the tokenizer the model was trained with")


def load_classifier(model: str, task: Task, seed: int):
    """`model` with a sequence-classification head for `task`; the head is initialised after seeding."""
    problem = "regression" if task.is_regression else "single_label_classification"
    set_seed(seed)  # the fresh classifier is initialised while loading: seed first, or results depend on the process
    loaded, _ = load_model(model, model_class=AutoModelForSequenceClassification, num_labels=task.num_labels,
                           problem_type=problem)
    return loaded


def evaluate_all(trainer: Trainer, task: Task, data: dict) -> dict:
    """``{"dev": {split: metrics}, "dev_score": mean score over dev splits, "train_loss_full": loss on all of train}``."""
    dev = {}
    for split in task.dev_splits:
        figures = trainer.evaluate(by_length(data[split]), metric_key_prefix=split)
        dev[split] = {k[len(split) + 1:]: v for k, v in figures.items() if k[len(split) + 1:] in (*task.metrics, "accuracy", "score", "loss")}
    return {"dev": dev, "dev_score": float(np.mean([d["score"] for d in dev.values()])),
            "train_loss_full": trainer.evaluate(by_length(data["train"]), metric_key_prefix="train")["train_loss"]}


def evaluate_saved(cfg: GlueOptions) -> dict:
    """`cfg.model`, a classifier saved for `cfg.task` (its masks, if any, as saved), scored as it is, no training:
    what ``evaluate_all`` returns, with ``dev_examples``. Writes nothing (the Trainer's output dir is not created)."""
    from ..integrations.hf_trainer import quiet
    from transformers import DataCollatorWithPadding

    from .common import training_arguments

    task = get_task(cfg.task)
    data, tokenizer = load_data(cfg, task)
    model = load_classifier(cfg.model, task, cfg.seed)
    args = training_arguments(Path(cfg.out) / "evaluate", learning_rate=0.0, **cfg.trainer_kwargs(), save_strategy="no")
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids))
    if not cfg.progress:
        quiet(trainer)
    return {**evaluate_all(trainer, task, data), "dev_examples": {split: len(data[split]) for split in task.dev_splits}}


def by_length(dataset: ListDataset) -> ListDataset:
    """`dataset` sorted by length, so evaluation batches pad little; predictions and labels keep the same order,
    so every metric is unchanged."""
    return ListDataset(sorted(dataset, key=lambda example: len(example["input_ids"])))
