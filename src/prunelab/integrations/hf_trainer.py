"""The HF ``Trainer`` integration: callbacks that forward Trainer events to a ``Pruner`` or a ``MaskLearner``.

Attach them with ``attach(trainer, pruner)``: it puts the callback first, before the ``report_to`` integrations
(TensorBoard, W&B, ...), so the ``pruning/*`` figures it adds to each log reach them. A callback passed as
``Trainer(callbacks=[...])`` runs after those integrations and its figures would reach ``log_history`` only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..pruner import STATE_FILE, Pruner
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

    * ``on_step_end``: ``learner.update(global_step)`` (the target of the step; the penalty's direction).
    * ``on_log``: add ``adapt/sparsity``, ``adapt/target_sparsity`` and ``adapt/penalty_direction`` to the logs.

    The penalty itself is part of the loss (``learner.penalty()``), added by the training loop.
    """

    def __init__(self, learner):
        self.learner = learner

    def figures(self) -> dict[str, float]:
        return self.learner.metrics()

    def on_step_end(self, args, state, control, **kwargs):
        self.learner.update(state.global_step)


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
