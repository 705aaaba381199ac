"""The HF ``Trainer`` integration: callbacks that forward Trainer events to a ``Pruner`` or a ``MaskLearner``, and
the Trainer mixin that adds a ``MaskLearner``'s penalty to the training loss.

Attach them with ``attach(trainer, pruner)``: it puts the callback first, before the ``report_to`` integrations
(TensorBoard, W&B, ...), so the ``pruning/*`` figures it adds to each log reach them. A callback passed as
``Trainer(callbacks=[...])`` runs after those integrations and its figures would reach ``log_history`` only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..config import PruningConfig
from ..pruner import STATE_FILE, Pruner
from ..sparsity import mask_sparsity
from ..errors import MissingInputError

if TYPE_CHECKING:
    from transformers import Trainer


class _LogsFigures(TrainerCallback):
    """Adds ``self.figures()`` to every log, and to the log history entry the Trainer just recorded."""

    def figures(self) -> dict[str, float]:
        raise NotImplementedError

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            figures = self.figures()
            logs.update(figures)
            if state.log_history:
                state.log_history[-1].update(figures)


class PruningCallback(_LogsFigures):
    """Drive `pruner` from a ``transformers.Trainer``.

    * ``on_train_begin``: restore the pruner from the checkpoint being resumed (``global_step > 0``), hand it
      the Trainer's optimizer (``pruner.attach_optimizer``; its state is loaded by then), then
      ``pruner.step(global_step)`` (a oneshot schedule at step 0 prunes here, before any update).
    * ``on_step_end``: ``pruner.step(global_step)`` after each optimizer step.
    * ``on_save``: check that pruned weights are exactly zero (``pruner.verify``; an error, never a silent
      checkpoint of regrown weights), then save the pruner's masks and schedule position into the checkpoint.
    * ``on_train_end``: the same check.
    * ``on_log``: add ``pruning/sparsity`` and ``pruning/target_sparsity`` to the logs.

    Args:
        pruner: The pruner to drive.
        resume_from: Checkpoint folder to restore the pruner from when resuming; by default
            ``<output_dir>/checkpoint-<global_step>``, where the Trainer saved it.
    """

    def __init__(self, pruner: Pruner, resume_from: str | os.PathLike | None = None):
        self.pruner = pruner
        self.resume_from = resume_from

    def figures(self) -> dict[str, float]:
        return self.pruner.metrics()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            checkpoint = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if not os.path.isfile(os.path.join(checkpoint, STATE_FILE)):
                raise MissingInputError(
                    f"resuming at step {state.global_step} but {checkpoint} holds no pruner state ({STATE_FILE}); "
                    "pass PruningCallback(pruner, resume_from=CHECKPOINT_DIR)"
                )
            self.pruner.load(checkpoint)
        self.pruner.attach_optimizer(kwargs.get("optimizer"))
        self.pruner.step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self._check_held()
        if state.is_world_process_zero:
            self.pruner.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args, state, control, **kwargs):
        self._check_held()
        self.pruner.attach_optimizer(None)  # the Trainer's optimizer is done; keep no reference to it

    def _check_held(self):
        if self.pruner.config.mode == "enforced" and self.pruner.masks:
            self.pruner.verify()


class MaskLearnerCallback(_LogsFigures):
    """Drive a ``methods.learned_masks.MaskLearner`` from a ``transformers.Trainer``.

    * ``on_step_end``: ``learner.update(global_step)`` (the target of the step; the penalty's direction). At step
      `fix_at` (soft movement) the masks become fixed: ``reached`` records the sparsity of θ > 0, the round(s·N)
      lowest scores go (``learner.finish(exact=True)``), and a ``Pruner`` (``pruner``) holds those masks for the
      steps left, as ``PruningCallback`` does, told the Trainer's optimizer.
    * ``on_log``: add ``adapt/sparsity``, ``adapt/target_sparsity`` and ``adapt/penalty_direction`` to the logs
      (``pruning/*`` once the masks are fixed).

    The penalty itself is part of the loss (``learner.penalty()``: ``MaskLearnerLoss``, or your training loop).
    """

    def __init__(self, learner, fix_at: int | None = None):
        self.learner, self.fix_at = learner, fix_at
        self.reached: float | None = None
        self._held: PruningCallback | None = None

    @property
    def pruner(self) -> Pruner | None:
        """The pruner holding the fixed masks; ``None`` before step `fix_at`."""
        return None if self._held is None else self._held.pruner

    def figures(self) -> dict[str, float]:
        return self.learner.metrics() if self._held is None else self._held.figures()

    def on_step_end(self, args, state, control, **kwargs):
        if self._held is not None:
            return self._held.on_step_end(args, state, control, **kwargs)
        self.learner.update(state.global_step)
        if self.fix_at is not None and state.global_step >= self.fix_at:
            self.reached = self.learner.realized_sparsity()
            self._held = PruningCallback(_hold_exact_masks(self.learner))
            self._held.pruner.attach_optimizer(kwargs.get("optimizer"))
            self._held.pruner.step(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self._held is not None:
            self._held.on_save(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self._held is not None:
            self._held.on_train_end(args, state, control, **kwargs)


def _hold_exact_masks(learner) -> Pruner:
    """The learner's exact masks (one selection over all its targets), the pruned weights zeroed, held by a Pruner."""
    masks = learner.finish(exact=True)
    selection = {**learner.selection, "exclude": learner.selection["exclude"] or []}
    config = PruningConfig(sparsity=mask_sparsity(*masks.values()), criterion="soft-movement", scope="global",
                           schedule="constant", **selection)
    return Pruner(learner.model, config, masks=masks)


class MaskLearnerLoss:
    """A ``Trainer`` mixin, put first (``class MyTrainer(MaskLearnerLoss, Trainer)``): the training loss gains the
    penalty of the ``MaskLearner`` passed as ``MyTrainer(..., learner=learner)`` (none: the loss is unchanged);
    evaluation keeps the plain loss. The penalty counts once per optimizer step, however many batches accumulate."""

    def __init__(self, *args, learner=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.learner = learner

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.learner is None or not model.training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        penalty = self.learner.penalty()
        scaled = self.loss_is_scaled_for_ga  # as the Trainer decides whether it divides the loss by the accumulation
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        if scaled:  # the Trainer adds every batch's loss undivided: the penalty's share of each
            penalty = penalty / getattr(self, "current_gradient_accumulation_steps", 1)
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss


def attach(trainer: Trainer, pruner_or_callback) -> TrainerCallback:
    """Add a ``PruningCallback`` for a ``Pruner`` (or the given callback) to `trainer`, before every other
    callback, so that its log figures reach the ``report_to`` integrations. Returns the callback."""
    callback = PruningCallback(pruner_or_callback) if isinstance(pruner_or_callback, Pruner) else pruner_or_callback
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def quiet(trainer: Trainer) -> Trainer:
    """No console output from `trainer` (its logs still reach log_history and the run's train.log)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
