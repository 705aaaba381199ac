"""Continued masked-LM pre-training while pruning (Compressing BERT's "pruned during pre-training").

The story of a run:
    1. read the corpus (one document or paragraph per line) and hold out a dev split;
    2. tokenize, concatenate and cut into blocks of ``max_seq_len``; mask the dev blocks once, seeded, so
       every dev loss is measured on the same masked tokens;
    3. load MODEL with an MLM head (a model without one gets a fresh head, with a warning, and may warm it
       up with the encoder frozen);
    4. measure the dev MLM loss (the paper's "pre-train loss" of the dense model);
    5. train with the pruning callback: cubic 0 -> S over [prune_start, prune_end], updated every
       prune_every steps, masks held afterwards;
    6. measure the dev loss again and save model + masks as a pruned artifact in ``<out>/model``.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, default_data_collator, set_seed

from ..artifact import load_model, save_artifact
from ..config import PruningConfig, versions
from ..corpus import read_corpus, read_hub_corpus, split_dev, to_blocks
from ..pruner import Pruner
from .run import (ListDataset, quiet, METRICS_FILE, attach_log_file, attach_pruner, detach_log_file, is_main_process, last_checkpoint, prepare_run_dir,
                  save_run_config, training_arguments, write_json)

logger = logging.getLogger(__name__)

_MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining", "LMHeadModel")


@dataclass
class PretrainConfig:
    """A pre-training-while-pruning run. Steps are optimizer steps."""

    model: str
    corpus: list[str]
    out: str
    sparsity: float
    dataset: str | None = None  # an HF dataset NAME[:CONFIG] instead of (or besides) corpus files
    dataset_split: str = "train"
    text_column: str = "text"
    steps: int = 1000
    criterion: str = "magnitude"
    scope: str = "matrix"
    schedule: str = "cubic"
    prune_start: int = 0
    prune_end: int | None = None  # default: min(10_000, steps), the paper's first 10k steps
    prune_every: int = 10
    dev_file: list[str] = field(default_factory=list)
    dev_fraction: float = 0.05
    tokenizer: str | None = None
    max_seq_len: int = 128
    batch_size: int = 32
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    head_warmup_steps: int = 0
    max_dev_blocks: int = 512
    max_train_lines: int | None = None  # use only the first N lines of the training text
    seed: int = 42
    grad_accum: int = 1
    fp16: bool = False
    bf16: bool = False
    report_to: str = "none"
    logging_steps: int = 50
    save_steps: int = 500
    progress: bool = True  # the Trainer's progress bars

    def __post_init__(self) -> None:
        if not self.corpus and not self.dataset:
            raise ValueError("no pre-training text: pass --corpus FILE [FILE ...] or --dataset NAME[:CONFIG]")
        if self.steps < 1:
            raise ValueError(f"--steps {self.steps} must be >= 1")
        if self.prune_end is None:
            self.prune_end = min(10_000, self.steps)
        if self.schedule not in ("cubic", "oneshot"):
            raise ValueError(f"--schedule {self.schedule!r} is not allowed; use cubic or oneshot")
        if self.prune_end > self.steps:
            raise ValueError(f"--prune-end {self.prune_end} is beyond --steps {self.steps}; the schedule would not reach the sparsity")
        if not 0.0 < self.dev_fraction < 1.0 and not self.dev_file:
            raise ValueError(f"--dev-fraction {self.dev_fraction} must be in (0, 1), or pass --dev-file")
        self.pruning_config()  # validates sparsity, criterion, scope and the schedule window

    def pruning_config(self) -> PruningConfig:
        return PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope, schedule=self.schedule,
                             start_step=self.prune_start, end_step=self.prune_end, update_every=self.prune_every,
                             seed=self.seed, mode="enforced")


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


def pretrain(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    out = prepare_run_dir(cfg.out, overwrite=overwrite, resume=resume)
    save_run_config(out, cfg)
    handler = attach_log_file(out)
    try:
        return _pretrain(cfg, out)
    finally:
        detach_log_file(handler)


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
        _, tokenizer = load_model(cfg.tokenizer)
    if tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    train = ListDataset([{"input_ids": b} for b in to_blocks(train_lines, tokenizer, cfg.max_seq_len)])
    dev = _mask_once(to_blocks(dev_lines, tokenizer, cfg.max_seq_len)[: cfg.max_dev_blocks], tokenizer, cfg.mlm_probability, cfg.seed)
    if len(train) == 0 or len(dev) == 0:
        raise ValueError(f"the corpus gives {len(train)} training and {len(dev)} dev blocks of {cfg.max_seq_len} tokens; provide more text")
    collate = _collate(DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability))

    # 3. a model without an MLM head gets a fresh one
    architectures = getattr(model.config, "architectures", None) or []
    fresh_head = not any(a.endswith(_MLM_ARCHITECTURES) for a in architectures)
    if fresh_head:
        warnings.warn(f"{cfg.model} has no MLM head ({', '.join(architectures) or 'no architectures'}); a freshly "
                      "initialised head is trained from scratch" + ("" if cfg.head_warmup_steps else
                      "; consider --head-warmup-steps to warm it up with the encoder frozen first"), stacklevel=2)
    common = dict(seed=cfg.seed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, fp16=cfg.fp16, bf16=cfg.bf16,
                  report_to=cfg.report_to, logging_steps=cfg.logging_steps, disable_tqdm=not cfg.progress)
    checkpoints = out / "checkpoints"
    resuming = last_checkpoint(checkpoints)
    head_loss = None
    if fresh_head and cfg.head_warmup_steps and not resuming:
        head_loss = _warm_up_head(model, train, collate, out / "head-warmup", cfg, common)

    # 4. dense dev loss
    args = training_arguments(checkpoints, learning_rate=cfg.lr, max_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                              weight_decay=cfg.weight_decay, save_strategy="steps", save_steps=cfg.save_steps, **common)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev, data_collator=collate)
    if not cfg.progress:
        quiet(trainer)
    before_path = out / "dev_loss_before.json"  # measured once; a resumed run reads it back
    if resuming and before_path.is_file():
        dev_loss_before = json.loads(before_path.read_text())["dev_loss_before"]
    else:
        dev_loss_before = trainer.evaluate()["eval_loss"]
        write_json(before_path, {"dev_loss_before": dev_loss_before})

    # 5. train while pruning
    pruner = Pruner(model, cfg.pruning_config())
    attach_pruner(trainer, pruner)
    trainer.train(resume_from_checkpoint=resuming)

    # 6. final dev loss and the artifact
    dev_loss_after = trainer.evaluate()["eval_loss"]
    report = pruner.report()
    metrics = {
        "dev_loss_before": dev_loss_before, "dev_loss_after": dev_loss_after, "head_warmup_loss": head_loss,
        "fresh_mlm_head": fresh_head, "sparsity": report["overall"]["sparsity"], "target_sparsity": cfg.sparsity,
        "steps": trainer.state.global_step, "train_blocks": len(train), "dev_blocks": len(dev),
        "seconds": time.time() - started, "versions": versions(),
    }
    info = {"source": cfg.model, "config": pruner.config.to_dict(), "versions": versions(), "report": report, "pretrain": metrics}
    if is_main_process():
        save_artifact(model, tokenizer, pruner.masks, info, out / "model", overwrite=True)
    write_json(out / "log_history.json", {"log_history": trainer.state.log_history})
    write_json(out / METRICS_FILE, metrics)
    return metrics


def _warm_up_head(model, train, collate, out: Path, cfg: PretrainConfig, common: dict) -> float:
    """Train only the MLM head (the encoder and the tied embeddings frozen) for `head_warmup_steps`."""
    frozen = [p for p in model.base_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        args = training_arguments(out, learning_rate=cfg.lr * 10, max_steps=cfg.head_warmup_steps, save_strategy="no", **common)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
        result = (trainer if cfg.progress else quiet(trainer)).train()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    logger.info("MLM head warmed up for %d steps, loss %.4f", cfg.head_warmup_steps, result.training_loss)
    return result.training_loss
