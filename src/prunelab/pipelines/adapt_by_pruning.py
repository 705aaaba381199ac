"""Adapting by pruning (Gao, Colombo, Wang 2021) on a GLUE task, with the HF Trainer, over a grid of score learning rates.

The whole base model is frozen; a ``MaskLearner`` puts trainable scores over its target weights, and only those
scores and the task head (the parameters outside the base model, e.g. ``classifier``) train: the scores at the
grid's learning rate, the head at ``head_lr``. The sparsity penalty is added to the training loss; the
callback updates its target after each step. At the end the masks are fixed (θ > 0, or exactly the target with
``exact``), the pretrained weights are multiplied by them, and the dev sets are evaluated on that plain model.

The learning-rate grid, the evaluation and ``<out>/metrics.json`` are ``grid.run_grid``'s; this module is one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DataCollatorWithPadding, Trainer

from ..config import versions
from ..data.glue import Task, compute_metrics, get_task
from ..integrations.hf_trainer import MaskLearnerCallback, MaskLearnerLoss, attach, quiet
from ..methods.learned_masks import MaskLearner
from ..sparsity import sparsity_report
from .common import check_number, optimizer_steps, training_arguments
from .grid import GlueOptions, RunOutcome, evaluate_all, load_classifier, run_grid


@dataclass(kw_only=True)
class AdaptConfig(GlueOptions):
    """An adapting-by-pruning run; ``lrs`` are the scores' learning rates (see ``GlueOptions`` for the rest)."""

    sparsity: float = 0.5
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
    warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("--sparsity", self.sparsity, low=0, high=1, high_open=True)
        check_number("--head-lr", self.head_lr, low=0, low_open=True)
        check_number("--penalty", self.penalty, low=0)
        check_number("--band", self.band, low=0)
        check_number("--ramp", self.ramp, low=0, high=1)
        check_number("--t-backward", self.t_backward, low=0, low_open=True)
        if self.t_forward is not None:
            check_number("--t-forward", self.t_forward, low=0, low_open=True)
        check_number("--init-mean", self.init_mean)
        check_number("--init-std", self.init_std, low=0)


class _AdaptTrainer(MaskLearnerLoss, Trainer):
    """The Trainer with the learner's sparsity penalty added to the training loss (``learner=``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs)  # without num_items_in_batch: a per-batch mean


def adapt(cfg: AdaptConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    task = get_task(cfg.task)
    return run_grid(cfg, lambda lr, data, tokenizer, run_dir: _run_one_lr(cfg, task, lr, data, tokenizer, run_dir),
                    lambda best: {"regime": "adapting by pruning (learned masks over frozen weights)"},
                    resume=resume, overwrite=overwrite)


def _run_one_lr(cfg: AdaptConfig, task: Task, lr: float, data: dict, tokenizer, run_dir) -> RunOutcome:
    model = load_classifier(cfg.model, task, cfg.seed)
    # 1. Freeze the base model; the head is what is left. 2. Scores over the targets. 3. Two learning rates.
    model.base_model.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    steps = optimizer_steps(cfg.epochs, len(data["train"]), cfg.batch_size, cfg.grad_accum)
    learner = MaskLearner(model, cfg.sparsity, penalty=cfg.penalty, t_forward=cfg.t_forward, t_backward=cfg.t_backward,
                          ramp_steps=round(cfg.ramp * steps), band=cfg.band, init_mean=cfg.init_mean, init_std=cfg.init_std,
                          include=cfg.include, exclude=cfg.exclude, seed=cfg.seed)
    optimizer = torch.optim.AdamW([{"params": list(learner.parameters()), "lr": lr, "weight_decay": 0.0},
                                   {"params": head, "lr": cfg.head_lr, "weight_decay": 0.01}])

    args = training_arguments(run_dir / "checkpoints", learning_rate=lr, **cfg.trainer_kwargs(), num_train_epochs=cfg.epochs,
                              warmup_steps=cfg.warmup_ratio, save_strategy="no", eval_strategy="no")
    trainer = _AdaptTrainer(model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
                            compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids),
                            optimizers=(optimizer, None), learner=learner)
    if not cfg.progress:
        quiet(trainer)
    attach(trainer, MaskLearnerCallback(learner))
    trainer.train()
    during = learner.metrics()
    masks = learner.finish(exact=cfg.exact)  # from here on: the plain pretrained model times its masks

    report = sparsity_report(model, learner.targets)
    result = {"lr": lr, **evaluate_all(trainer, task, data), "sparsity": report["overall"]["sparsity"],
              "target_sparsity": cfg.sparsity, "sparsity_at_end_of_training": during["adapt/sparsity"],
              "steps": trainer.state.global_step}
    # the saved masks' target selection, in the pruning-config keys ``prunelab finetune`` reads back
    selection = {"sparsity": cfg.sparsity, "include": cfg.include, "exclude": cfg.exclude, "layers": None}
    info = {"source": cfg.model, "task": task.name, "method": "adapt", "config": selection, "versions": versions(),
            "report": report, "adapt": result}
    return RunOutcome(result, trainer, (model, tokenizer, masks, info))
