"""Knowledge-aware sparse pruning (Xu et al. 2021): prune a student on a GLUE task while it learns from a dense teacher.

The story of a run:
    1. load the teacher (a dense classifier fine-tuned on the task, e.g. ``<out>/model`` of
       ``prunelab finetune --save-model``) and check it against the task and the student: head, labels,
       vocabulary, width, depth; nothing is written before these checks pass;
    2. read and tokenize the task; then for each learning rate, from the same starting weights:
    3. load the student with a fresh classifier (seeded) and train it with ``prunelab.distill``'s loss
       (attention + hidden states + soft logits, optionally the gold labels) against the frozen teacher;
    4. meanwhile prune it: cubic 0 -> ``sparsity`` over the first ``prune_end`` of training, masks updated
       every ``prune_every`` steps and held afterwards, so the final sparsity is exact;
    5. evaluate dev and the whole training set with the plain task loss (comparable to the baseline's), and
       measure seconds per step, the teacher forward's share of them and peak memory.

``teacher=None`` is the baseline: the same run with the task loss only, i.e. magnitude pruning during
fine-tuning on the same budget. ``<out>/metrics.json`` holds what ``finetune``'s does plus those costs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback, set_seed

from ..artifact import load_model, save_artifact
from ..config import PruningConfig, versions
from ..distill import DistillWeights, distill_terms, layer_map, total_loss
from ..glue import Task, compute_metrics, get_task
from ..pruner import Pruner
from .finetune import _keep_only_best_model, evaluate_all, load_data
from .run import (METRICS_FILE, attach_log_file, attach_pruner, detach_log_file, is_main_process, last_checkpoint,
                  prepare_run_dir, quiet, save_run_config, training_arguments, write_json)

logger = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """A knowledge-aware sparse pruning run (see the module docstring); `teacher=None` is the baseline,
    which ignores the loss weights and the temperature."""

    model: str
    teacher: str | None
    task: str
    out: str
    data_dir: str | None = None
    tokenizer: str | None = None
    sparsity: float = 0.9
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 4e-5, 5e-5])
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_len: int = 128
    max_train_samples: int | None = None
    seed: int = 42
    temperature: float = 1.0
    alpha_attention: float = 1.0
    alpha_hidden: float = 1.0
    alpha_logits: float = 1.0
    alpha_hard: float = 0.0
    prune_end: float = 0.7  # fraction of training by which the target sparsity is reached
    prune_every: int = 10
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
    save_model: bool = False

    def __post_init__(self) -> None:
        get_task(self.task)
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"--lr {self.lrs} must be a comma-separated list of positive learning rates, e.g. 2e-5,3e-5")
        if self.epochs <= 0 or self.batch_size < 1 or self.max_seq_len < 8 or self.grad_accum < 1:
            raise ValueError("--epochs must be > 0, --batch-size >= 1, --max-seq-len >= 8 and --grad-accum >= 1")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples {self.max_train_samples} must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"--temperature {self.temperature} must be > 0; 1 is the plain softmax, higher softens both distributions")
        if not 0.0 < self.prune_end <= 1.0:
            raise ValueError(f"--prune-end {self.prune_end} must be in (0, 1]: the fraction of training by which the "
                             "sparsity is reached, e.g. 0.7")
        if self.prune_every < 1:
            raise ValueError(f"--prune-every {self.prune_every} must be >= 1 (steps between mask updates)")
        if self.teacher is not None:
            self.weights()
        self.pruning_config(total_steps=1)  # validates sparsity, criterion and scope

    def weights(self) -> DistillWeights:
        return DistillWeights(self.alpha_attention, self.alpha_hidden, self.alpha_logits, self.alpha_hard)

    def total_steps(self, num_train: int) -> int:
        """Optimizer steps of one run: the Trainer runs exactly these (``max_steps``), so the schedule ends in time."""
        steps_per_epoch = math.ceil(math.ceil(num_train / self.batch_size) / self.grad_accum)
        return max(1, math.ceil(self.epochs * steps_per_epoch))

    def pruning_config(self, total_steps: int) -> PruningConfig:
        return PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope, schedule="cubic",
                             mode="enforced", start_step=0, end_step=max(1, round(self.prune_end * total_steps)),
                             update_every=self.prune_every, seed=self.seed)


def distill_prune(cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    task = get_task(cfg.task)
    student, tokenizer = load_model(cfg.model)  # its config, for the checks; each run loads it afresh
    student_config = student.config
    del student
    if cfg.tokenizer:
        _, tokenizer = load_model(cfg.tokenizer)
    if tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    teacher, mapping = _load_teacher(cfg, task, student_config, tokenizer) if cfg.teacher is not None else (None, None)
    out = prepare_run_dir(cfg.out, overwrite=overwrite, resume=resume)
    save_run_config(out, cfg)
    handler = attach_log_file(out)
    try:
        started = time.time()
        data, _ = load_data(cfg, task, tokenizer)
        runs = [_run_one_lr(cfg, task, lr, data, tokenizer, teacher, out / f"lr-{lr:g}") for lr in cfg.lrs]
        best = max(runs, key=lambda r: r["dev_score"])
        if cfg.save_model and is_main_process():
            _keep_only_best_model(out, runs, best)
        metrics = {
            "task": task.name, "teacher": cfg.teacher,
            "method": "knowledge-aware sparse pruning" if teacher is not None else "magnitude pruning, task loss only",
            "layer_map": mapping,
            "best_lr": best["lr"], "dev": best["dev"], "dev_score": best["dev_score"],
            "train_loss_full": best["train_loss_full"], "sparsity": best["sparsity"], "runs": runs,
            "train_examples": len(data["train"]), "seconds_per_step": best["seconds_per_step"],
            "teacher_share": best["teacher_share"], "peak_memory_mb": best["peak_memory_mb"],
            "peak_memory_of": _peak_memory_source(), "seconds": time.time() - started, "versions": versions(),
        }
        write_json(out / METRICS_FILE, metrics)
        return metrics
    finally:
        detach_log_file(handler)


def _load_teacher(cfg: DistillConfig, task: Task, student_config, tokenizer) -> tuple[torch.nn.Module, list[int] | None]:
    """Load the teacher frozen and in eval mode, after checking it can teach this student on this task.

    Returns:
        ``(teacher, layer map)``; the map is ``None`` when neither attention nor hidden states are distilled.
    """
    try:
        teacher, teacher_tokenizer = load_model(cfg.teacher)
    except FileNotFoundError:
        raise FileNotFoundError(f"--teacher {cfg.teacher!r} is not a directory; pass a dense classifier fine-tuned on "
                                f"{task.name} (e.g. OUT/model of `prunelab finetune --save-model`), or none for the baseline") from None
    kind = type(teacher).__name__
    if not kind.endswith("ForSequenceClassification"):
        raise ValueError(f"--teacher {cfg.teacher!r} is a {kind}, not a sequence classifier; pass a model fine-tuned "
                         f"on {task.name} (e.g. OUT/model of `prunelab finetune --save-model`)")
    if teacher.config.num_labels != task.num_labels:
        raise ValueError(f"--teacher {cfg.teacher!r} has {teacher.config.num_labels} labels, {task.name} has "
                         f"{task.num_labels}; pass a teacher fine-tuned on {task.name}")
    same_vocab = (teacher_tokenizer.get_vocab() == tokenizer.get_vocab() if teacher_tokenizer is not None
                  else teacher.config.vocab_size == student_config.vocab_size)
    if not same_vocab:
        raise ValueError(f"--teacher {cfg.teacher!r} has another vocabulary than the student {cfg.model!r}; teacher and "
                         "student must share the tokenizer")
    weights, mapping = cfg.weights(), None
    if weights.attention > 0 or weights.hidden > 0:
        mapping = layer_map(student_config.num_hidden_layers, teacher.config.num_hidden_layers)  # raises for a deeper student
    if weights.hidden > 0 and teacher.config.hidden_size != student_config.hidden_size:
        raise ValueError(f"student hidden size {student_config.hidden_size} != teacher hidden size {teacher.config.hidden_size}; "
                         "hidden-state distillation needs equal sizes: pass --alpha-hidden 0 or a teacher of the student's width")
    if weights.attention > 0:
        if teacher.config.num_attention_heads != student_config.num_attention_heads:
            raise ValueError(f"student has {student_config.num_attention_heads} attention heads, teacher "
                             f"{teacher.config.num_attention_heads}; pass --alpha-attention 0 or a teacher with as many heads")
        teacher.set_attn_implementation("eager")  # only eager attention returns the attention matrices
    return teacher.eval().requires_grad_(False), mapping


class _DistillTrainer(Trainer):
    """A Trainer whose training loss is the distillation loss; evaluation keeps the plain task loss."""

    def __init__(self, *args, teacher=None, weights: DistillWeights | None = None, temperature: float = 1.0,
                 regression: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides by grad_accum
        self.teacher, self.weights, self.temperature, self.regression = teacher, weights, temperature, regression
        self.teacher_seconds = 0.0
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_batches = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None or not model.training:  # baseline, or evaluation: the task loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        flags = dict(output_attentions=self.weights.attention > 0, output_hidden_states=self.weights.hidden > 0)
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        started = _clock(device)
        with torch.no_grad():
            teacher_out = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}, **flags)
        self.teacher_seconds += _clock(device) - started
        outputs = model(**inputs, **flags)
        terms = distill_terms(outputs, teacher_out, inputs.get("attention_mask"), self.weights, self.temperature, self.regression)
        loss = total_loss(terms, self.weights, outputs.loss)
        for name, value in {**terms, "hard": outputs.loss}.items():
            if value is not None:
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach()
        self._term_batches += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_batches:  # a training log: add the terms' means since the last one
            logs.update({f"distill/{k}": float(v) / self._term_batches for k, v in self._term_sums.items()})
            self._term_sums, self._term_batches = {}, 0
        super().log(logs, start_time)


class _StepTimer(TrainerCallback):
    """Seconds of the optimizer steps (forward, backward, optimizer, mask update), from step begin to step end."""

    def __init__(self):
        self.seconds, self.steps, self._started = 0.0, 0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = _clock(args.device)

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds += _clock(args.device) - self._started
            self.steps += 1


def _run_one_lr(cfg: DistillConfig, task: Task, lr: float, data: dict, tokenizer, teacher, run_dir: Path) -> dict:
    result_path = run_dir / "result.json"
    if result_path.is_file():  # finished earlier: never redone
        logger.info("lr %g already finished in %s", lr, run_dir)
        return json.loads(result_path.read_text())
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    problem = "regression" if task.is_regression else "single_label_classification"
    set_seed(cfg.seed)  # the fresh classifier is initialised while loading: seed first
    model, _ = load_model(cfg.model, model_class=AutoModelForSequenceClassification, num_labels=task.num_labels, problem_type=problem)
    if teacher is not None and cfg.alpha_attention > 0:
        model.set_attn_implementation("eager")
    total_steps = cfg.total_steps(len(data["train"]))
    args = training_arguments(
        run_dir / "checkpoints", seed=cfg.seed, learning_rate=lr, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        fp16=cfg.fp16, bf16=cfg.bf16, report_to=cfg.report_to, logging_steps=cfg.logging_steps, disable_tqdm=not cfg.progress,
        max_steps=total_steps, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        save_strategy="epoch", eval_strategy="no",
    )
    trainer = _DistillTrainer(model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
                              compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids), teacher=teacher,
                              weights=cfg.weights() if teacher is not None else None, temperature=cfg.temperature,
                              regression=task.is_regression)
    if not cfg.progress:
        quiet(trainer)
    pruner = Pruner(model, cfg.pruning_config(total_steps))
    attach_pruner(trainer, pruner)
    timer = _StepTimer()
    trainer.add_callback(timer)  # after the pruner's callback: a step's time includes its mask update
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=last_checkpoint(run_dir / "checkpoints"))
    peak_memory_mb = _peak_memory_mb()

    report = pruner.report()
    if pruner.target_sparsity != cfg.sparsity:
        raise RuntimeError(f"the schedule ended at sparsity {pruner.target_sparsity}, not {cfg.sparsity}; "
                           f"end step {pruner.config.end_step} of {trainer.state.global_step}")
    result = {
        "lr": lr, **evaluate_all(trainer, task, data),
        "sparsity": report["overall"]["sparsity"], "steps": trainer.state.global_step, "seconds": time.time() - started,
        "seconds_per_step": timer.seconds / max(timer.steps, 1),
        "teacher_share": trainer.teacher_seconds / timer.seconds if timer.seconds else 0.0,
        "peak_memory_mb": peak_memory_mb,
    }
    if cfg.save_model and is_main_process():
        info = {"source": cfg.model, "teacher": cfg.teacher, "task": task.name, "config": pruner.config.to_dict(),
                "versions": versions(), "report": report, "distill": result}
        save_artifact(model, tokenizer, pruner.masks, info, run_dir / "model", overwrite=True)
        result["model"] = str(run_dir / "model")
    write_json(run_dir / "log_history.json", {"log_history": trainer.state.log_history})
    write_json(result_path, result)
    if is_main_process():  # the run is done; its result is what resumes use
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def _clock(device) -> float:
    """Wall time, after the device's queued work: CUDA kernels run asynchronously."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _peak_memory_mb() -> float:
    """CUDA: the peak allocated since the run's reset. Otherwise the process's max RSS since it started."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _peak_memory_source() -> str:
    return "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "process max RSS (resource.getrusage)"
