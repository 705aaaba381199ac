"""Continued masked-LM pre-training while pruning (Compressing BERT's "pruned during pre-training").

The story of a run:
    1. read the corpus (one document or paragraph per line) and hold out a dev split;
    2. tokenize, concatenate and cut into blocks of ``max_seq_len``; mask the dev blocks once, seeded, so
       every dev loss is measured on the same masked tokens;
    3. load MODEL with an MLM head (a model without one gets a fresh head, with a warning, and may warm it
       up with the encoder frozen);
    4. measure the dev MLM loss (the paper's "pre-train loss" of the dense model);
    5. train with the pruning callback: cubic 0 -> S over [prune_start, prune_end], updated every
       prune_every steps, masks held afterwards (soft movement: the masks are learned over the same window and
       fixed exactly at prune_end, see ``soft_movement``);
    6. measure the dev loss again and save model + masks as a pruned artifact in ``<out>/model``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, default_data_collator, set_seed

from ..artifact import load_config, load_model, load_tokenizer, save_artifact
from ..config import PruningConfig, check_criterion, versions
from ..data.corpus import read_corpus, read_hub_corpus, split_dev, to_blocks
from ..io import read_json
from ..integrations.hf_trainer import MaskLearnerLoss, PruningCallback, attach, quiet
from ..pruner import Pruner
from . import soft_movement
from .common import (METRICS_FILE, ListDataset, RunOptions, check_number, is_main_process, last_checkpoint, prepare_run_dir,
                     run_log, training_arguments, write_json_once)
from .soft_movement import SOFT_MOVEMENT, SoftMovementOptions
from ..errors import InputError, MissingInputError

logger = logging.getLogger(__name__)

_MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining", "LMHeadModel")


@dataclass(kw_only=True)
class PretrainConfig(RunOptions, SoftMovementOptions):
    """A pre-training-while-pruning run (see ``RunOptions`` and ``SoftMovementOptions`` for the rest). Steps are
    optimizer steps."""

    corpus: list[str]
    sparsity: float
    dataset: str | None = None  # an HF dataset NAME[:CONFIG] instead of (or besides) corpus files
    dataset_split: str = "train"
    text_column: str = "text"
    steps: int = 1000
    criterion: str = "magnitude"
    scope: str = "matrix"
    schedule: str = "cubic"
    structure: str | None = None  # "N:M" (oneshot schedule): exactly N of every M weights kept
    prune_start: int = 0
    prune_end: int | None = None  # default: min(10_000, steps), the paper's first 10k steps
    prune_every: int = 10
    dev_file: list[str] = field(default_factory=list)
    dev_fraction: float = 0.05
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    head_warmup_steps: int = 0
    max_dev_blocks: int = 512
    max_train_lines: int | None = None  # use only the first N lines of the training text
    save_steps: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.corpus and not self.dataset:
            raise InputError("no pre-training text: pass --corpus FILE [FILE ...] or --dataset NAME[:CONFIG]")
        if isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps < 1:
            raise InputError(f"--steps {self.steps} must be >= 1")
        check_number("--steps", self.steps, low=1, integer=True)
        if self.prune_end is None:
            self.prune_end = min(10_000, self.steps)
        if self.schedule not in ("cubic", "oneshot"):
            raise InputError(f"--schedule {self.schedule!r} is not allowed; use cubic or oneshot")
        check_number("--prune-end", self.prune_end, low=0, integer=True)
        if self.prune_end > self.steps:
            raise InputError(f"--prune-end {self.prune_end} is beyond --steps {self.steps}; the schedule would not reach the sparsity")
        if not self.dev_file and not (isinstance(self.dev_fraction, float) and 0.0 < self.dev_fraction < 1.0):
            raise InputError(f"--dev-fraction {self.dev_fraction} must be in (0, 1), or pass --dev-file")
        check_number("--lr", self.lr, low=0, low_open=True)
        for flag, value in (("--warmup-steps", self.warmup_steps), ("--head-warmup-steps", self.head_warmup_steps)):
            check_number(flag, value, low=0, integer=True)
        check_number("--weight-decay", self.weight_decay, low=0)
        check_number("--mlm-probability", self.mlm_probability, low=0, high=1, low_open=True, high_open=True)
        check_number("--save-steps", self.save_steps, low=1, integer=True)
        check_number("max_dev_blocks", self.max_dev_blocks, low=1, integer=True)
        if self.max_train_lines is not None:
            check_number("max_train_lines", self.max_train_lines, low=1, integer=True)
        check_criterion(self.criterion, "prunelab pretrain")
        self.check_soft_movement(self.criterion, self.sparsity, self.scope, self.structure)
        if self.criterion == SOFT_MOVEMENT and self.schedule != "cubic":
            raise InputError(f"--schedule {self.schedule} does not apply to soft-movement: its masks are learned as the "
                             "target rises (cubic) to --prune-end, then fixed; drop --schedule")
        if self.criterion == "movement" and self.schedule == "oneshot" and self.prune_start == 0:
            raise InputError("--criterion movement with --schedule oneshot prunes at --prune-start 0, before any step "
                             "has given its scores a value (it would choose by position): pass --prune-start N >= 1, "
                             "or use the cubic schedule")
        self.pruning_config()  # validates sparsity, criterion, scope and the schedule window

    def pruning_config(self) -> PruningConfig:
        return PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope, schedule=self.schedule,
                             start_step=self.prune_start, end_step=self.prune_end, update_every=self.prune_every,
                             seed=self.seed, mode="enforced", structure=self.structure)


def _mask_once(blocks: list[list[int]], tokenizer, probability: float, seed: int) -> ListDataset:
    """Apply MLM masking to the dev blocks once, seeded: every later dev loss sees the same masks."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed, return_tensors="pt")
    batch = collator([{"input_ids": b} for b in blocks])
    return ListDataset([{k: v[i] for k, v in batch.items()} for i in range(len(blocks))])


def _collate(dynamic: DataCollatorForLanguageModeling):
    def collate(features: list[dict]) -> dict:
        if "labels" in features[0]:  # pre-masked dev blocks
            return default_data_collator(features)
        return dynamic(features)

    return collate


class MaskedTokensLoss(Trainer):
    """A Trainer whose MLM loss takes the logits of the masked tokens only.

    The output projection (vocabulary x hidden: for MiniLM as costly as its six layers together) then runs on the
    ~15% of positions that have labels instead of on all of them; a forward pre-hook on the model's output
    embeddings selects them. The loss is the cross-entropy over those tokens that the model itself computes
    (summed over ``num_items_in_batch`` when the Trainer counts them, so gradient accumulation weighs tokens alike).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        chosen = labels != -100
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _, args: (args[0][chosen], *args[1:]))
        try:
            outputs = model(**inputs)
        finally:
            hook.remove()
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels[chosen], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else chosen.sum().clamp(min=1))
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        return (loss, outputs) if return_outputs else loss


class MaskedTokensTrainer(MaskLearnerLoss, MaskedTokensLoss):
    """The pre-training Trainer; with soft movement (``learner=``) the learner's penalty joins its training loss."""


def pretrain(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds (a finished run resumed is not run again)."""
    for path in [*cfg.corpus, *cfg.dev_file]:  # checked, like the model, before the run directory exists
        if not Path(path).is_file():
            raise MissingInputError(f"corpus file {path} not found; pass existing text files to --corpus / --dev-file")
    load_config(cfg.model)
    if cfg.tokenizer and load_tokenizer(cfg.tokenizer) is None:
        raise InputError(f"--tokenizer {cfg.tokenizer!r} holds no tokenizer files; pass a tokenizer directory")
    out, finished = prepare_run_dir(cfg, overwrite=overwrite, resume=resume)
    if finished is not None:
        logger.warning("%s already finished; nothing to do", out)
        return {**finished, "already_finished": True}
    with run_log(out):
        return _pretrain(cfg, out)


def _pretrain(cfg: PretrainConfig, out: Path) -> dict:
    started = time.time()
    # 1-2. data
    lines = (read_corpus(cfg.corpus) if cfg.corpus else []) + (
        read_hub_corpus(cfg.dataset, cfg.dataset_split, cfg.text_column) if cfg.dataset else [])
    train_lines, dev_lines = (lines, read_corpus(cfg.dev_file)) if cfg.dev_file else split_dev(lines, cfg.dev_fraction)
    train_lines = train_lines[: cfg.max_train_lines]
    set_seed(cfg.seed)  # a missing MLM head is initialised while loading: seed first
    model, tokenizer = load_model(cfg.model, model_class=AutoModelForMaskedLM)
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer is None:
        raise InputError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    train = ListDataset([{"input_ids": b} for b in to_blocks(train_lines, tokenizer, cfg.max_seq_len)])
    dev_blocks = to_blocks(dev_lines, tokenizer, cfg.max_seq_len)[: cfg.max_dev_blocks]
    if len(train) == 0 or len(dev_blocks) == 0:  # before masking: the collator fails on no blocks
        raise InputError(f"the corpus gives {len(train)} training and {len(dev_blocks)} dev blocks of {cfg.max_seq_len} "
                         "tokens; provide more text (or a lower --max-seq-len)")
    dev = _mask_once(dev_blocks, tokenizer, cfg.mlm_probability, cfg.seed)
    collate = _collate(DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability))

    # 3. a model without an MLM head gets a fresh one
    architectures = getattr(model.config, "architectures", None) or []
    fresh_head = not any(a.endswith(_MLM_ARCHITECTURES) for a in architectures)
    if fresh_head:
        warnings.warn(f"{cfg.model} has no MLM head ({', '.join(architectures) or 'no architectures'}); a freshly "
                      "initialised head is trained from scratch" + ("" if cfg.head_warmup_steps else
                      "; consider --head-warmup-steps to warm it up with the encoder frozen first"), stacklevel=2)
    common = cfg.trainer_kwargs()
    checkpoints = out / "checkpoints"
    resuming = last_checkpoint(checkpoints)
    head_loss = None
    if fresh_head and cfg.head_warmup_steps and not resuming:
        head_loss = _warm_up_head(model, train, collate, out / "head-warmup", cfg, common)

    # 4. dense dev loss (soft movement's scores come first, as the Trainer takes their optimizer; they start
    #    positive, so its masks keep every weight until training moves them)
    soft = cfg.criterion == SOFT_MOVEMENT
    learner, optimizer, callback = soft_movement.start(
        model, cfg, sparsity=cfg.sparsity, lr=cfg.lr, weight_decay=cfg.weight_decay, ramp_start=cfg.prune_start,
        ramp_end=cfg.prune_end, fix_at=cfg.prune_end, seed=cfg.seed) if soft else (None, None, None)
    args = training_arguments(checkpoints, learning_rate=cfg.lr, max_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                              weight_decay=cfg.weight_decay, save_strategy="no" if soft else "steps",  # soft: see above
                              save_steps=cfg.save_steps, prediction_loss_only=True, **common)
    trainer = MaskedTokensTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev, data_collator=collate,
                                  learner=learner, optimizers=(optimizer, None))
    if not cfg.progress:
        quiet(trainer)
    before_path = out / "dev_loss_before.json"  # measured once; a resumed run reads it back
    if resuming and before_path.is_file():
        dev_loss_before = read_json(before_path, "dev loss file")["dev_loss_before"]
    else:
        dev_loss_before = trainer.evaluate()["eval_loss"]
        write_json_once(before_path, {"dev_loss_before": dev_loss_before})

    # 5. train while pruning
    if not soft:
        callback = PruningCallback(Pruner(model, cfg.pruning_config()))
    attach(trainer, callback)
    trainer.train(resume_from_checkpoint=resuming)

    # 6. final dev loss and the artifact
    pruner, fixed = (soft_movement.finished(callback, trainer.state.global_step) if soft else
                     (callback.pruner, {"target_sparsity": cfg.sparsity}))
    dev_loss_after = trainer.evaluate()["eval_loss"]
    report = pruner.sparsity_report()
    metrics = {
        "dev_loss_before": dev_loss_before, "dev_loss_after": dev_loss_after, "head_warmup_loss": head_loss,
        "fresh_mlm_head": fresh_head, "sparsity": report["overall"]["sparsity"], **fixed,
        "steps": trainer.state.global_step, "train_blocks": len(train), "dev_blocks": len(dev),
        "seconds": time.time() - started, "versions": versions(),
    }
    info = {"source": cfg.model, "config": pruner.config.to_dict(), "versions": versions(), "report": report, "pretrain": metrics}
    if is_main_process():
        save_artifact(model, tokenizer, pruner.masks, info, out / "model", overwrite=True)
    write_json_once(out / "log_history.json", {"log_history": trainer.state.log_history})
    write_json_once(out / METRICS_FILE, metrics)
    return metrics


def _warm_up_head(model, train, collate, out: Path, cfg: PretrainConfig, common: dict) -> float:
    """Train only the MLM head (the encoder and the tied embeddings frozen) for `head_warmup_steps`."""
    frozen = [p for p in model.base_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        args = training_arguments(out, learning_rate=cfg.lr * 10, max_steps=cfg.head_warmup_steps, save_strategy="no", **common)
        trainer = MaskedTokensTrainer(model=model, args=args, train_dataset=train, data_collator=collate)
        result = (trainer if cfg.progress else quiet(trainer)).train()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    logger.info("MLM head warmed up for %d steps, loss %.4f", cfg.head_warmup_steps, result.training_loss)
    return result.training_loss
