"""GLUE fine-tuning of a (pruned) model with the HF Trainer, over a learning-rate grid, in the paper's regimes.

Regimes (Gordon et al. 2020):
    * pruned (``masks="held"``): the model's masks are enforced while fine-tuning;
    * information deletion (``masks="free"``): its zeros are the start, weights may regrow;
    * pruned after downstream fine-tuning: dense for ``prune_after_epochs``, one-shot pruned to ``sparsity``
      (``criterion``, ``scope``), then ``epochs`` more with masks held; by soft movement the masks are learned
      over those first epochs instead (the target rising to ``sparsity``) and fixed exactly at the pruning step
      (``soft_movement``);
    * random pruning: ``criterion="random"`` wherever a criterion is taken.

The learning-rate grid, the evaluation and ``<out>/metrics.json`` are ``grid.run_grid``'s; this module is one run.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import DataCollatorWithPadding, Trainer

from ..artifact import mask_selection, saved_masks
from ..config import PruningConfig, check_criterion, versions
from ..data.glue import Task, compute_metrics, get_task
from ..integrations.hf_trainer import MaskLearnerLoss, PruningCallback, attach, quiet
from ..pruner import Pruner
from . import soft_movement
from .common import check_number, last_checkpoint, optimizer_steps_per_epoch, training_arguments
from .grid import GlueOptions, RunOutcome, evaluate_all, load_classifier, run_grid
from .soft_movement import SOFT_MOVEMENT, SoftMovementOptions
from ..errors import InputError


@dataclass(kw_only=True)
class FinetuneConfig(GlueOptions, SoftMovementOptions):
    """A GLUE fine-tuning run; see the module docstring for the regimes, ``GlueOptions`` and ``SoftMovementOptions``
    for the rest."""

    masks: str = "held"
    prune_after_epochs: float | None = None
    sparsity: float | None = None
    criterion: str = "magnitude"
    scope: str = "matrix"
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.masks not in ("held", "free"):
            raise InputError(f"--masks {self.masks!r} is not allowed; use held (pruned) or free (information deletion)")
        if (self.prune_after_epochs is None) != (self.sparsity is None):
            raise InputError("--prune-after-epochs and --sparsity go together (the pruned-after-fine-tuning regime); "
                             "to fine-tune an already pruned model pass its directory as MODEL")
        check_criterion(self.criterion, "prunelab finetune")
        if self.criterion == SOFT_MOVEMENT and self.prune_after_epochs is None:
            raise InputError("--criterion soft-movement learns masks in the pruned-after-fine-tuning regime: pass "
                             "--prune-after-epochs N --sparsity S")
        for flag, value, default in (("--criterion", self.criterion, "magnitude"), ("--scope", self.scope, "matrix")):
            if self.prune_after_epochs is None and value != default:
                raise InputError(f"{flag} {value} chooses what finetune prunes, and without --prune-after-epochs N "
                                 "--sparsity S it prunes nothing (MODEL's masks, if any, are held as they are): pass "
                                 f"both, or drop {flag}")
        self.check_soft_movement(self.criterion, self.sparsity, self.scope)
        if self.sparsity is not None:
            PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope)  # validates all three
            check_number("--prune-after-epochs", self.prune_after_epochs, low=0, low_open=True)
        else:
            PruningConfig(criterion=self.criterion, scope=self.scope)
        check_number("--weight-decay", self.weight_decay, low=0)


def finetune(cfg: FinetuneConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    task = get_task(cfg.task)
    if cfg.criterion == SOFT_MOVEMENT and saved_masks(cfg.model)[0]:
        raise InputError(f"model {cfg.model!r} is a pruned artifact; soft-movement learns its masks from a dense model "
                         "(its weights would regrow under learned masks): pass the dense model, or another --criterion")
    return run_grid(cfg, lambda lr, data, tokenizer, run_dir: _run_one_lr(cfg, task, lr, data, tokenizer, run_dir),
                    lambda best: {"regime": _regime(cfg)}, resume=resume, overwrite=overwrite)


def _regime(cfg: FinetuneConfig) -> str:
    if cfg.prune_after_epochs is not None:
        return f"pruned after {cfg.prune_after_epochs:g} epochs of fine-tuning ({cfg.criterion})"
    return {"held": "masks held (pruned)", "free": "masks free (information deletion)"}[cfg.masks]


class _FinetuneTrainer(MaskLearnerLoss, Trainer):
    """The Trainer; with soft movement (``learner=``) the learner's penalty joins its training loss."""


def _run_one_lr(cfg: FinetuneConfig, task: Task, lr: float, data: dict, tokenizer, run_dir) -> RunOutcome:
    model = load_classifier(cfg.model, task, cfg.seed)
    soft = cfg.criterion == SOFT_MOVEMENT
    if soft:  # scores learned while the weights train, until the pruning step fixes the masks exactly
        prune_step = _prune_step(cfg, len(data["train"]))
        learner, optimizer, callback = soft_movement.start(
            model, cfg, sparsity=cfg.sparsity, lr=lr, weight_decay=cfg.weight_decay, ramp_start=0, ramp_end=prune_step,
            fix_at=prune_step, seed=cfg.seed)
    else:
        learner, optimizer, callback = None, None, PruningCallback(_pruner_for(cfg, model, len(data["train"])))
    args = training_arguments(
        run_dir / "checkpoints", learning_rate=lr, **cfg.trainer_kwargs(),
        num_train_epochs=cfg.epochs + (cfg.prune_after_epochs or 0.0),
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio (transformers 5)
        weight_decay=cfg.weight_decay, save_strategy="no" if soft else "epoch",  # soft: see soft_movement
        eval_strategy="no",
    )
    trainer = _FinetuneTrainer(model=model, args=args, train_dataset=data["train"],
                               data_collator=DataCollatorWithPadding(tokenizer), learner=learner,
                               optimizers=(optimizer, None),
                               compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids))
    trainer.loss_is_scaled_for_ga = False  # classification losses are per-batch means: let the Trainer divide by grad_accum
    if not cfg.progress:
        quiet(trainer)
    attach(trainer, callback)
    trainer.train(resume_from_checkpoint=last_checkpoint(run_dir / "checkpoints"))

    pruner, fixed = (soft_movement.finished(callback, trainer.state.global_step) if soft else (callback.pruner, {}))
    report = pruner.sparsity_report()
    result = {"lr": lr, **evaluate_all(trainer, task, data), "sparsity": report["overall"]["sparsity"], **fixed,
              "steps": trainer.state.global_step}
    info = {"source": cfg.model, "task": task.name, "config": pruner.config.to_dict(), "versions": versions(),
            "report": report, "finetune": result}
    return RunOutcome(result, trainer, (model, tokenizer, pruner.masks, info))


def _pruner_for(cfg: FinetuneConfig, model, num_train: int) -> Pruner:
    """The pruner of the regime: an artifact's masks held (or free), or one-shot pruning after `prune_after_epochs`."""
    masks, info = saved_masks(cfg.model)
    selection = mask_selection(model, info.get("config", {}), masks)
    if cfg.prune_after_epochs is not None:
        config = PruningConfig(sparsity=cfg.sparsity, criterion=cfg.criterion, scope=cfg.scope, schedule="oneshot",
                               start_step=_prune_step(cfg, num_train), mode="enforced", seed=cfg.seed, **selection)
        return Pruner(model, config, masks=masks)
    mode = "enforced" if cfg.masks == "held" else "free"
    return Pruner(model, PruningConfig(schedule="constant", mode=mode, **selection), masks=masks)


def _prune_step(cfg: FinetuneConfig, num_train: int) -> int:
    """The optimizer step after `prune_after_epochs` epochs of `num_train` examples (at least 1)."""
    return max(1, round(cfg.prune_after_epochs * optimizer_steps_per_epoch(num_train, cfg.batch_size, cfg.grad_accum)))
