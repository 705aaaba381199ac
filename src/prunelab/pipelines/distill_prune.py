"""Knowledge-aware sparse pruning (Xu et al. 2021): prune a student on a GLUE task while it learns from a dense teacher.

The story of a run:
    1. load the teacher (a dense classifier fine-tuned on the task, e.g. ``<out>/model`` of
       ``prunelab finetune --save-model``) and check it against the task and the student: head, labels,
       vocabulary, width, depth; nothing is written before these checks pass;
    2. read and tokenize the task; then for each learning rate, from the same starting weights:
    3. load the student with a fresh classifier (seeded) and train it with ``prunelab.methods.kd_losses``'s loss
       (attention + hidden states + soft logits, optionally the gold labels) against the frozen teacher;
    4. meanwhile prune it: cubic 0 -> ``sparsity`` from ``prune_start`` to ``prune_end`` of training, masks updated
       every ``prune_every`` steps and held afterwards, so the final sparsity is exact;
    5. evaluate dev and the whole training set with the plain task loss (comparable to the baseline's), and
       measure seconds per step, the teacher forward's share of them and peak memory.

``teacher=None`` is the baseline: the same run with the task loss only, i.e. magnitude pruning during
fine-tuning on the same budget. ``<out>/metrics.json`` (``grid.run_grid``) holds what ``finetune``'s does plus
those costs.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from ..artifact import load_model, load_tokenizer
from ..config import PruningConfig, check_criterion, versions
from ..targets import parse_kinds
from ..data.glue import Task, compute_metrics, get_task
from ..integrations.hf_trainer import MaskLearnerLoss, PruningCallback, attach, quiet
from ..methods.kd_losses import DistillSettings, DistillWeights, distill_terms, layer_map, total_loss
from ..pruner import Pruner
from . import soft_movement
from .common import check_number, last_checkpoint, optimizer_steps, training_arguments
from .grid import GlueOptions, RunOutcome, evaluate_all, load_classifier, run_grid
from .soft_movement import SOFT_MOVEMENT, SoftMovementOptions
from ..errors import InputError, MissingInputError

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DistillConfig(GlueOptions, DistillSettings, SoftMovementOptions):
    """A knowledge-aware sparse pruning run (see the module docstring); `teacher=None` is the baseline,
    which ignores the loss weights and the temperature. See ``GlueOptions``, ``DistillSettings`` and
    ``SoftMovementOptions`` for the rest."""

    teacher: str | None
    sparsity: float = 0.9
    criterion: str = "magnitude"
    scope: str = "matrix"
    exclude: list[str] = field(default_factory=list)  # target kinds left dense (Sanh et al. prune the encoder only)
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise InputError(f"--temperature {self.temperature} must be > 0; 1 is the plain softmax, higher softens both distributions")
        if not (isinstance(self.prune_end, (int, float)) and 0.0 < self.prune_end <= 1.0):
            raise InputError(f"--prune-end {self.prune_end} must be in (0, 1]: the fraction of training by which the "
                             "sparsity is reached, e.g. 0.7")
        if not (isinstance(self.prune_start, (int, float)) and 0.0 <= self.prune_start < self.prune_end):
            raise InputError(f"--prune-start {self.prune_start} must be in [0, --prune-end {self.prune_end}): the fraction "
                             "of training before pruning starts, e.g. 0.1")
        check_number("--prune-every", self.prune_every, low=1, integer=True)
        check_number("--weight-decay", self.weight_decay, low=0)
        if self.teacher is not None:
            self.weights()  # validates the loss weights
        check_criterion(self.criterion, "prunelab distill-prune")
        self.exclude = sorted(parse_kinds(self.exclude, "--exclude"))
        self.check_soft_movement(self.criterion, self.sparsity, self.scope)
        if self.criterion != SOFT_MOVEMENT:
            self.pruning_config(total_steps=1)  # validates sparsity, criterion and scope

    def window(self, total_steps: int) -> tuple[int, int]:
        """The optimizer steps pruning starts and reaches the sparsity at, of a run of `total_steps`."""
        start = round(self.prune_start * total_steps)
        return start, max(start + 1, round(self.prune_end * total_steps))

    def pruning_config(self, total_steps: int) -> PruningConfig:
        start, end = self.window(total_steps)
        return PruningConfig(sparsity=self.sparsity, criterion=self.criterion, scope=self.scope, exclude=self.exclude,
                             schedule="cubic", mode="enforced", start_step=start, end_step=end,
                             update_every=self.prune_every, seed=self.seed)


def distill_prune(cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` and return what ``<out>/metrics.json`` holds."""
    task = get_task(cfg.task)
    student, tokenizer = load_model(cfg.model)  # its config, for the checks; each run loads it afresh
    student_config = student.config
    del student
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer is None:
        raise InputError(f"model {cfg.model!r} has no tokenizer files; pass --tokenizer DIR")
    teacher, mapping = _load_teacher(cfg, task, student_config, tokenizer) if cfg.teacher is not None else (None, None)

    def summary(best: dict) -> dict:
        return {"teacher": cfg.teacher, "layer_map": mapping,
                "method": f"knowledge-aware sparse pruning, {cfg.criterion}" if teacher is not None else f"{cfg.criterion} pruning, task loss only",
                "seconds_per_step": best["seconds_per_step"], "teacher_share": best["teacher_share"],
                "peak_memory_mb": best["peak_memory_mb"], "peak_memory_of": _peak_memory_source()}

    return run_grid(cfg, lambda lr, data, tok, run_dir: _run_one_lr(cfg, task, lr, data, tok, teacher, run_dir), summary,
                    resume=resume, overwrite=overwrite, tokenizer=tokenizer)


def _load_teacher(cfg: DistillConfig, task: Task, student_config, tokenizer) -> tuple[torch.nn.Module, list[int] | None]:
    """Load the teacher frozen and in eval mode, after checking it can teach this student on this task.

    Returns:
        ``(teacher, layer map)``; the map is ``None`` when neither attention nor hidden states are distilled.
    """
    try:
        teacher, teacher_tokenizer = load_model(cfg.teacher)
    except FileNotFoundError:
        raise MissingInputError(f"--teacher {cfg.teacher!r} is not a directory; pass a dense classifier fine-tuned on "
                                f"{task.name} (e.g. OUT/model of `prunelab finetune --save-model`), or none for the baseline") from None
    kind = type(teacher).__name__
    if not kind.endswith("ForSequenceClassification"):
        raise InputError(f"--teacher {cfg.teacher!r} is a {kind}, not a sequence classifier; pass a model fine-tuned "
                         f"on {task.name} (e.g. OUT/model of `prunelab finetune --save-model`)")
    if teacher.config.num_labels != task.num_labels:
        raise InputError(f"--teacher {cfg.teacher!r} has {teacher.config.num_labels} labels, {task.name} has "
                         f"{task.num_labels}; pass a teacher fine-tuned on {task.name}")
    same_vocab = (teacher_tokenizer.get_vocab() == tokenizer.get_vocab() if teacher_tokenizer is not None
                  else teacher.config.vocab_size == student_config.vocab_size)
    if not same_vocab:
        raise InputError(f"--teacher {cfg.teacher!r} has another vocabulary than the student {cfg.model!r}; teacher and "
                         "student must share the tokenizer")
    weights, mapping = cfg.weights(), None
    if weights.attention > 0 or weights.hidden > 0:
        mapping = layer_map(student_config.num_hidden_layers, teacher.config.num_hidden_layers)  # raises for a deeper student
    if weights.hidden > 0 and teacher.config.hidden_size != student_config.hidden_size:
        raise InputError(f"student hidden size {student_config.hidden_size} != teacher hidden size {teacher.config.hidden_size}; "
                         "hidden-state distillation needs equal sizes: pass --alpha-hidden 0 or a teacher of the student's width")
    if weights.attention > 0:
        if teacher.config.num_attention_heads != student_config.num_attention_heads:
            raise InputError(f"student has {student_config.num_attention_heads} attention heads, teacher "
                             f"{teacher.config.num_attention_heads}; pass --alpha-attention 0 or a teacher with as many heads")
        teacher.set_attn_implementation("eager")  # only eager attention returns the attention matrices
    return teacher.eval().requires_grad_(False), mapping


class _DistillLoss(Trainer):
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


class _DistillTrainer(MaskLearnerLoss, _DistillLoss):
    """The distillation Trainer; with soft movement (``learner=``) the learner's penalty joins its training loss."""


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


def _run_one_lr(cfg: DistillConfig, task: Task, lr: float, data: dict, tokenizer, teacher, run_dir) -> RunOutcome:
    model = load_classifier(cfg.model, task, cfg.seed)
    if teacher is not None and cfg.alpha_attention > 0:
        model.set_attn_implementation("eager")
    total_steps = optimizer_steps(cfg.epochs, len(data["train"]), cfg.batch_size, cfg.grad_accum)
    soft = cfg.criterion == SOFT_MOVEMENT
    if soft:  # scores over every target, the weights trained under their masks; fixed exactly at --prune-end, then held
        start, end = cfg.window(total_steps)
        learner, optimizer, callback = soft_movement.start(
            model, cfg, sparsity=cfg.sparsity, lr=lr, weight_decay=cfg.weight_decay, ramp_start=start, ramp_end=end,
            fix_at=end, seed=cfg.seed, exclude=cfg.exclude)
    else:
        learner, optimizer, callback = None, None, PruningCallback(Pruner(model, cfg.pruning_config(total_steps)))
    args = training_arguments(run_dir / "checkpoints", learning_rate=lr, **cfg.trainer_kwargs(), max_steps=total_steps,
                              warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                              save_strategy="no" if soft else "epoch",  # a model under masks' parametrizations
                              eval_strategy="no")
    trainer = _DistillTrainer(model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
                              compute_metrics=lambda p: compute_metrics(task, p.predictions, p.label_ids), teacher=teacher,
                              weights=cfg.weights() if teacher is not None else None, temperature=cfg.temperature,
                              regression=task.is_regression, learner=learner, optimizers=(optimizer, None))
    if not cfg.progress:
        quiet(trainer)
    attach(trainer, callback)
    timer = _StepTimer()
    trainer.add_callback(timer)  # after the pruner's callback: a step's time includes its mask update
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=last_checkpoint(run_dir / "checkpoints"))
    peak_memory_mb = _peak_memory_mb()

    if soft:  # the learned scores chose: the round(s·N) lowest went at --prune-end (exact), held by a pruner
        pruner, fixed = soft_movement.finished(callback, trainer.state.global_step)
    else:
        pruner, fixed = callback.pruner, {"target_sparsity": cfg.sparsity}
        if pruner.target_sparsity != cfg.sparsity:
            raise RuntimeError(f"the schedule ended at sparsity {pruner.target_sparsity}, not {cfg.sparsity}; "
                               f"end step {pruner.config.end_step} of {trainer.state.global_step}")
    report = pruner.sparsity_report()
    result = {
        "lr": lr, **evaluate_all(trainer, task, data), "sparsity": report["overall"]["sparsity"], **fixed,
        "steps": trainer.state.global_step, "seconds_per_step": timer.seconds / max(timer.steps, 1),
        "teacher_share": trainer.teacher_seconds / timer.seconds if timer.seconds else 0.0, "peak_memory_mb": peak_memory_mb,
    }
    info = {"source": cfg.model, "teacher": cfg.teacher, "task": task.name, "config": pruner.config.to_dict(),
            "versions": versions(), "report": report, "distill": result}
    return RunOutcome(result, trainer, (model, tokenizer, pruner.masks, info))


def _clock(device) -> float:
    """Wall time, after the device's queued work: CUDA kernels run asynchronously."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _peak_memory_mb() -> float:
    """CUDA: the peak allocated since the run's reset. Linux: this process's own peak RSS (VmHWM); getrusage's
    ru_maxrss is not used there, as a child started by vfork (subprocess, Ray) inherits its parent's peak in it.
    Elsewhere: the max RSS from getrusage."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _peak_memory_source() -> str:
    if torch.cuda.is_available():
        return "torch.cuda.max_memory_allocated"
    return "process peak RSS (VmHWM)" if sys.platform.startswith("linux") else "process max RSS (resource.getrusage)"
