"""Adapting by pruning (Gao, Colombo, Wang 2021) on a GLUE task, with the HF Trainer, over a grid of score learning rates.

The whole base model is frozen; a ``MaskLearner`` puts trainable scores over its target weights, and only those
scores and the task head (the parameters outside the base model, e.g. ``classifier``) train: the scores at the
grid's learning rate, the head at ``head_lr``. The sparsity penalty is added to the training loss; the
callback updates its target after each step. At the end the masks are fixed (θ > 0, or exactly the target with
``exact``), the pretrained weights are multiplied by them, and the dev sets are evaluated on that plain model.

Each learning rate runs in ``<out>/lr-<lr>/``; a finished one is never redone. ``<out>/metrics.json`` holds the
best learning rate's dev metrics, its loss over the training set, its realized sparsity, and every run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, set_seed

from ..adapt import MaskLearner
from ..artifact import load_model, save_artifact
from ..callback import MaskLearnerCallback
from ..config import versions
from ..glue import Task, compute_metrics, get_task
from ..report import sparsity_report
from .finetune import _keep_only_best_model, evaluate_all, load_data
from .run import (METRICS_FILE, attach_log_file, detach_log_file, is_main_process, prepare_run_dir, quiet, save_run_config,
                  training_arguments, write_json)

logger = logging.getLogger(__name__)


@dataclass
class AdaptConfig:
    """An adapting-by-pruning run; ``lrs`` are the scores' learning rates (the best dev score is kept)."""

    model: str
    task: str
    out: str
    sparsity: float = 0.5
    data_dir: str | None = None
    tokenizer: str | None = None
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    head_lr: float = 1e-3
    penalty: float = 1e-8
    t_forward: float | None = None  # None: the hard step 1[θ > 0]
    t_backward: float = 1.0
    ramp: float = 0.5  # fraction of training over which the target sparsity ramps up (cubic)
    band: float = 0.01  # realized sparsity this far above the target reverses the penalty
    exact: bool = False
    init_mean: float = 0.01
    init_std: float = 0.001
    include: list[str] | None = None
    exclude: list[str] | None = None
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_len: int = 128
    max_train_samples: int | None = None
    seed: int = 42
    save_model: bool = False
    warmup_ratio: float = 0.0
    grad_accum: int = 1
    fp16: bool = False
    bf16: bool = False
    report_to: str = "none"
    logging_steps: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"--sparsity {self.sparsity} is outside [0, 1); pass the fraction of zeros, e.g. 0.5")
        if not self.lrs or any(lr <= 0 for lr in self.lrs) or self.head_lr <= 0:
            raise ValueError(f"--lr {self.lrs} and --head-lr {self.head_lr} must be positive learning rates, e.g. 1e-3")
        if self.penalty < 0 or self.band < 0 or not 0.0 <= self.ramp <= 1.0:
            raise ValueError(f"--penalty {self.penalty} and --band {self.band} must be >= 0, --ramp {self.ramp} in [0, 1]")
        if self.t_backward <= 0 or (self.t_forward is not None and self.t_forward <= 0):
            raise ValueError(f"--t-forward {self.t_forward} and --t-backward {self.t_backward} must be > 0")
        if self.epochs <= 0 or self.batch_size < 1 or self.max_seq_len < 8 or self.grad_accum < 1:
            raise ValueError("--epochs must be > 0, --batch-size and --grad-accum >= 1, --max-seq-len >= 8")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples {self.max_train_samples} must be >= 1")


class _AdaptTrainer(Trainer):
    """The Trainer with the learner's sparsity penalty added to the training loss."""

    def __init__(self, *args, learner: MaskLearner, **kwargs):
        super().__init__(*args, **kwargs)
        self.learner = learner
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs)
        if not model.training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        loss = loss + self.learner.penalty()
        return (loss, outputs) if return_outputs else loss


def adapt(cfg: AdaptConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
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
            "task": task.name, "regime": "adapting by pruning (learned masks over frozen weights)", "best_lr": best["lr"],
            "dev": best["dev"], "dev_score": best["dev_score"], "train_loss_full": best["train_loss_full"],
            "sparsity": best["sparsity"], "runs": runs, "train_examples": len(data["train"]),
            "seconds": time.time() - started, "versions": versions(),
        }
        write_json(out / METRICS_FILE, metrics)
        return metrics
    finally:
        detach_log_file(handler)


def _run_one_lr(cfg: AdaptConfig, task: Task, lr: float, data: dict, tokenizer, run_dir: Path) -> dict:
    result_path = run_dir / "result.json"
    if result_path.is_file():  # finished earlier: never redone
        logger.info("lr %g already finished in %s", lr, run_dir)
        return json.loads(result_path.read_text())
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    problem = "regression" if task.is_regression else "single_label_classification"
    set_seed(cfg.seed)  # the fresh head is initialised while loading
    model, _ = load_model(cfg.model, model_class=AutoModelForSequenceClassification, num_labels=task.num_labels, problem_type=problem)

    # 1. Freeze the base model; the head is what is left. 2. Scores over the targets. 3. Two learning rates.
    model.base_model.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    steps = math.ceil(math.ceil(len(data["train"]) / cfg.batch_size) / cfg.grad_accum * cfg.epochs)
    learner = MaskLearner(model, cfg.sparsity, penalty=cfg.penalty, t_forward=cfg.t_forward, t_backward=cfg.t_backward,
                          ramp_steps=round(cfg.ramp * steps), band=cfg.band, init_mean=cfg.init_mean, init_std=cfg.init_std,
                          include=cfg.include, exclude=cfg.exclude, seed=cfg.seed)
    optimizer = torch.optim.AdamW([{"params": list(learner.parameters()), "lr": lr, "weight_decay": 0.0},
                                   {"params": head, "lr": cfg.head_lr, "weight_decay": 0.01}])

    args = training_arguments(
        run_dir / "checkpoints", seed=cfg.seed, learning_rate=lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        fp16=cfg.fp16, bf16=cfg.bf16, report_to=cfg.report_to, logging_steps=cfg.logging_steps, disable_tqdm=not cfg.progress,
        num_train_epochs=cfg.epochs, warmup_steps=cfg.warmup_ratio, save_strategy="no", eval_strategy="no",
    )
    trainer = _AdaptTrainer(model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
                            compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids),
                            optimizers=(optimizer, None), learner=learner)
    if not cfg.progress:
        quiet(trainer)
    trainer.callback_handler.callbacks.insert(0, MaskLearnerCallback(learner))
    trainer.train()
    during = learner.metrics()
    masks = learner.finish(exact=cfg.exact)  # from here on: the plain pretrained model times its masks

    report = sparsity_report(model, learner.targets)
    result = {
        "lr": lr, **evaluate_all(trainer, task, data),
        "sparsity": report["overall"]["sparsity"], "target_sparsity": cfg.sparsity,
        "sparsity_at_end_of_training": during["adapt/sparsity"], "steps": trainer.state.global_step,
        "seconds": time.time() - started,
    }
    if cfg.save_model and is_main_process():
        info = {"source": cfg.model, "task": task.name, "method": "adapt", "config": _selection(cfg),
                "versions": versions(), "report": report, "adapt": result}
        save_artifact(model, tokenizer, masks, info, run_dir / "model", overwrite=True)
        result["model"] = str(run_dir / "model")
    write_json(run_dir / "log_history.json", {"log_history": trainer.state.log_history})
    write_json(result_path, result)
    return result


def _selection(cfg: AdaptConfig) -> dict:
    """The saved masks' target selection, in the pruning-config keys ``prunelab finetune`` reads back."""
    return {"sparsity": cfg.sparsity, "include": cfg.include, "exclude": cfg.exclude, "layers": None}

