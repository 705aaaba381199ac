"""GLUE fine-tuning of a (pruned) model with the HF Trainer, over a learning-rate grid, in the paper's regimes.

Regimes (Gordon et al. 2020):
    * pruned (``masks="held"``): the model's masks are enforced while fine-tuning;
    * information deletion (``masks="free"``): its zeros are the start, weights may regrow;
    * pruned after downstream fine-tuning: dense for ``prune_after_epochs``, one-shot pruned to ``sparsity``
      (``criterion``, ``scope``), then ``epochs`` more with masks held;
    * random pruning: ``criterion="random"`` wherever a criterion is taken.

Each learning rate runs in ``<out>/lr-<lr>/`` from the same starting weights; a finished one is never redone
(``resume``). ``<out>/metrics.json`` holds the best learning rate's dev metrics, its loss over the whole
training set after training, its realized sparsity, every run's results, and timings.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, set_seed

from ..artifact import load_model, save_artifact
from ..config import PruningConfig, versions
from ..glue import Task, compute_metrics, get_task, load_task
from ..pruner import Pruner
from ..scores import CRITERIA
from ..select import SCOPES
from .run import (ListDataset, quiet, METRICS_FILE, attach_log_file, attach_pruner, detach_log_file, held_masks_config, last_checkpoint,
                  is_main_process, mask_selection, prepare_run_dir, save_run_config, saved_masks, training_arguments, write_json)

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """A GLUE fine-tuning run; see the module docstring for the regimes."""

    model: str
    task: str
    out: str
    data_dir: str | None = None
    tokenizer: str | None = None
    masks: str = "held"
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 4e-5, 5e-5])
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_len: int = 128
    max_train_samples: int | None = None
    seed: int = 42
    save_model: bool = False
    prune_after_epochs: float | None = None
    sparsity: float | None = None
    criterion: str = "magnitude"
    scope: str = "matrix"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_accum: int = 1
    fp16: bool = False
    bf16: bool = False
    report_to: str = "none"
    logging_steps: int = 50
    progress: bool = True  # the Trainer's progress bars

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.masks not in ("held", "free"):
            raise ValueError(f"--masks {self.masks!r} is not allowed; use held (pruned) or free (information deletion)")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"--lr {self.lrs} must be a comma-separated list of positive learning rates, e.g. 2e-5,3e-5")
        if self.epochs <= 0 or self.batch_size < 1 or self.max_seq_len < 8:
            raise ValueError("--epochs must be > 0, --batch-size >= 1 and --max-seq-len >= 8")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples {self.max_train_samples} must be >= 1")
        if (self.prune_after_epochs is None) != (self.sparsity is None):
            raise ValueError("--prune-after-epochs and --sparsity go together (the pruned-after-fine-tuning regime); "
                             "to fine-tune an already pruned model pass its directory as MODEL")
        if self.sparsity is not None:
            PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope)  # validates all three
            if self.prune_after_epochs <= 0:
                raise ValueError(f"--prune-after-epochs {self.prune_after_epochs} must be > 0")
        elif self.criterion not in CRITERIA or self.scope not in SCOPES:
            PruningConfig(criterion=self.criterion, scope=self.scope)


def encode(examples, tokenizer, max_seq_len: int, regression: bool) -> ListDataset:
    """Tokenize (text_a, text_b, label) examples once, truncated to `max_seq_len`; padding is per batch."""
    a = [e[0] for e in examples]
    b = [e[1] for e in examples] if examples[0][1] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_seq_len)
    labels = [float(e[2]) if regression else int(e[2]) for e in examples]
    return ListDataset([{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(len(examples))])


def _subsample(examples: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(examples):
        return examples
    order = np.random.default_rng(seed).permutation(len(examples))[:n]
    return [examples[i] for i in sorted(order)]


def load_data(cfg, task: Task, tokenizer=None) -> tuple[dict[str, ListDataset], object]:
    """The task's splits tokenized (train subsampled, seeded), and the tokenizer: `tokenizer`, else
    ``cfg.tokenizer``'s or ``cfg.model``'s. Shared by finetune, adapt and distill-prune."""
    splits = load_task(task, cfg.data_dir)
    splits["train"] = _subsample(splits["train"], cfg.max_train_samples, cfg.seed)
    if tokenizer is None:
        _, tokenizer = load_model(cfg.tokenizer or cfg.model)
    if tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    return {name: encode(rows, tokenizer, cfg.max_seq_len, task.is_regression) for name, rows in splits.items()}, tokenizer


def evaluate_all(trainer: Trainer, task: Task, data: dict) -> dict:
    """``{"dev": {split: metrics}, "dev_score": mean score over dev splits, "train_loss_full": loss on all of train}``."""
    dev = {}
    for split in task.dev_splits:
        figures = trainer.evaluate(data[split], metric_key_prefix=split)
        dev[split] = {k[len(split) + 1:]: v for k, v in figures.items() if k[len(split) + 1:] in (*task.metrics, "score", "loss")}
    return {"dev": dev, "dev_score": float(np.mean([d["score"] for d in dev.values()])),
            "train_loss_full": trainer.evaluate(data["train"], metric_key_prefix="train")["train_loss"]}


def finetune(cfg: FinetuneConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    task = get_task(cfg.task)
    out = prepare_run_dir(cfg.out, overwrite=overwrite, resume=resume)
    save_run_config(out, cfg)
    handler = attach_log_file(out)
    try:
        started = time.time()
        data, tokenizer = load_data(cfg, task)
        runs = [_run_one_lr(cfg, task, lr, data, tokenizer, out / f"lr-{lr:g}") for lr in cfg.lrs]
        best = max(runs, key=lambda r: r["dev_score"])
        if cfg.save_model and is_main_process():
            _keep_only_best_model(out, runs, best)
        metrics = {
            "task": task.name, "regime": _regime(cfg), "best_lr": best["lr"], "dev": best["dev"],
            "dev_score": best["dev_score"], "train_loss_full": best["train_loss_full"],
            "sparsity": best["sparsity"], "runs": runs, "train_examples": len(data["train"]),
            "seconds": time.time() - started, "versions": versions(),
        }
        write_json(out / METRICS_FILE, metrics)
        return metrics
    finally:
        detach_log_file(handler)


def _regime(cfg: FinetuneConfig) -> str:
    if cfg.prune_after_epochs is not None:
        return f"pruned after {cfg.prune_after_epochs:g} epochs of fine-tuning ({cfg.criterion})"
    return {"held": "masks held (pruned)", "free": "masks free (information deletion)"}[cfg.masks]


def _run_one_lr(cfg: FinetuneConfig, task: Task, lr: float, data: dict, tokenizer, run_dir: Path) -> dict:
    result_path = run_dir / "result.json"
    if result_path.is_file():  # finished earlier: never redone
        import json

        logger.info("lr %g already finished in %s", lr, run_dir)
        return json.loads(result_path.read_text())
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    problem = "regression" if task.is_regression else "single_label_classification"
    set_seed(cfg.seed)  # the fresh classifier is initialised while loading: seed first, or results depend on the process
    model, _ = load_model(cfg.model, model_class=AutoModelForSequenceClassification, num_labels=task.num_labels, problem_type=problem)
    pruner = _pruner_for(cfg, model, len(data["train"]))

    total_epochs = cfg.epochs + (cfg.prune_after_epochs or 0.0)
    args = training_arguments(
        run_dir / "checkpoints", seed=cfg.seed, learning_rate=lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        fp16=cfg.fp16, bf16=cfg.bf16, report_to=cfg.report_to, logging_steps=cfg.logging_steps, disable_tqdm=not cfg.progress,
        num_train_epochs=total_epochs, warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio (transformers 5)
        weight_decay=cfg.weight_decay,
        save_strategy="epoch", eval_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids))
    trainer.loss_is_scaled_for_ga = False  # classification losses are per-batch means: let the Trainer divide by grad_accum
    if not cfg.progress:
        quiet(trainer)
    if pruner is not None:
        attach_pruner(trainer, pruner)
    trainer.train(resume_from_checkpoint=last_checkpoint(run_dir / "checkpoints"))

    report = pruner.report() if pruner is not None else None
    result = {
        "lr": lr, **evaluate_all(trainer, task, data),
        "sparsity": report["overall"]["sparsity"] if report else _overall_sparsity(model),
        "steps": trainer.state.global_step, "seconds": time.time() - started,
    }
    if cfg.save_model and is_main_process():
        masks = pruner.masks if pruner is not None else {}
        info = {"source": cfg.model, "task": task.name, "config": (pruner.config.to_dict() if pruner else {}),
                "versions": versions(), "report": report or {}, "finetune": result}
        save_artifact(model, tokenizer, masks, info, run_dir / "model", overwrite=True)
        result["model"] = str(run_dir / "model")
    write_json(run_dir / "log_history.json", {"log_history": trainer.state.log_history})
    write_json(result_path, result)
    if is_main_process():  # the run is done; its result is what resumes use
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def _pruner_for(cfg: FinetuneConfig, model, num_train: int) -> Pruner | None:
    masks, saved_config = saved_masks(cfg.model)
    mode = "enforced" if cfg.masks == "held" else "free"
    if cfg.prune_after_epochs is not None:
        steps_per_epoch = math.ceil(math.ceil(num_train / cfg.batch_size) / cfg.grad_accum)
        prune_step = max(1, round(cfg.prune_after_epochs * steps_per_epoch))
        selection = mask_selection(model, saved_config, masks)
        config = PruningConfig(sparsity=cfg.sparsity, criterion=cfg.criterion, scope=cfg.scope, schedule="oneshot",
                               start_step=prune_step, mode="enforced", seed=cfg.seed, **selection)
        return Pruner(model, config, masks=masks)
    return Pruner(model, held_masks_config(model, saved_config, masks, mode), masks=masks)


def _overall_sparsity(model) -> float:
    from ..targets import resolve_targets
    from ..report import sparsity_report

    return sparsity_report(model, resolve_targets(model))["overall"]["sparsity"]


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
