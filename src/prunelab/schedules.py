"""Sparsity schedules: pure functions of the optimizer step.

``step`` is the number of optimizer steps taken (HF ``state.global_step``); step 0 is before training.

    oneshot:  s_t = s_f for t >= t0 (0 before); one mask update, at t0.
    cubic:    Zhu & Gupta (2017), "To prune, or not to prune":
                  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3   for t0 <= t <= t1,
              clamped to s_i before t0 and held at s_f after t1. Masks update at t0, t0 + Δt, ...,
              and at t1 (so s_f is reached exactly). Compressing BERT: 0 -> s_f over the first 10k
              steps, Δt = 10.
    constant: masks are fixed (given, or read off the weights' zeros) and never recomputed; used to
              fine-tune an already pruned model.
"""

from __future__ import annotations
from .errors import InputError

SCHEDULES = ("oneshot", "cubic", "constant")


def sparsity_at(
    step: int,
    *,
    schedule: str,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    start_step: int = 0,
    end_step: int = 0,
) -> float:
    """Target sparsity at optimizer step `step` (see the module docstring for the formulas)."""
    if schedule == "constant":
        return final_sparsity
    if schedule == "oneshot":
        return final_sparsity if step >= start_step else 0.0
    if schedule == "cubic":
        # 1. before the window: the initial sparsity; 2. after it: the final one; 3. inside: the cubic.
        if step <= start_step:
            return initial_sparsity
        if step >= end_step:
            return final_sparsity
        progress = (step - start_step) / (end_step - start_step)
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3
    raise InputError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def is_update_step(step: int, *, schedule: str, start_step: int = 0, end_step: int = 0, every: int = 1) -> bool:
    """Whether masks are recomputed at `step`."""
    if schedule == "constant":
        return False
    if schedule == "oneshot":
        return step == start_step
    if schedule == "cubic":
        return start_step <= step <= end_step and ((step - start_step) % every == 0 or step == end_step)
    raise InputError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
