"""HF ``TrainerCallback`` that drives a ``Pruner``: it forwards Trainer events, nothing more."""

from __future__ import annotations

import os

from transformers import TrainerCallback

from .pruner import STATE_FILE, Pruner


class PruningCallback(TrainerCallback):
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

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            checkpoint = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if not os.path.isfile(os.path.join(checkpoint, STATE_FILE)):
                raise FileNotFoundError(
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

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            figures = self.pruner.metrics()
            logs.update(figures)
            if state.log_history:
                state.log_history[-1].update(figures)


class MaskLearnerCallback(TrainerCallback):
    """Drive an ``adapt.MaskLearner`` from a ``transformers.Trainer``.

    * ``on_step_end``: ``learner.update(global_step)`` (the target of the step; the penalty's direction).
    * ``on_log``: add ``adapt/sparsity``, ``adapt/target_sparsity`` and ``adapt/penalty_direction`` to the logs.

    The penalty itself is part of the loss (``learner.penalty()``), added by the training loop.
    """

    def __init__(self, learner):
        self.learner = learner

    def on_step_end(self, args, state, control, **kwargs):
        self.learner.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            figures = self.learner.metrics()
            logs.update(figures)
            if state.log_history:
                state.log_history[-1].update(figures)
