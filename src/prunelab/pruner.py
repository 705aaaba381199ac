"""The one stateful object: holds the masks of a model's targets, updates them on schedule, enforces them.

Usable in any PyTorch loop::

    pruner = Pruner(model, PruningConfig(sparsity=0.6, schedule="cubic", end_step=1000))
    pruner.step(0)                      # prune before training if the schedule says so
    for step, batch in enumerate(loader, start=1):
        loss = model(**batch).loss; loss.backward()
        optimizer.step(); optimizer.zero_grad()
        pruner.step(step)               # one call after each optimizer step

No forward hooks, no reparametrization: the model's state-dict keys never change. In ``enforced`` mode a
gradient hook on each target zeroes the gradients of pruned weights (so clipping and optimizer state
ignore them) and ``step`` re-zeroes the weights after every optimizer step, which keeps them exactly 0.0
whatever the optimizer does (momentum, Adam moments, weight decay).

Told the optimizer (``pruner.attach_optimizer(optimizer)``; ``PruningCallback`` does it), the pruner skips
that per-step pass for the weights an SGD, Adam or AdamW optimizer trains: it tidies the optimizer's state
at pruned positions, and from then on those optimizers' own arithmetic keeps the weights exactly 0.0 (a zero
gradient on a zero first moment gives a zero update, weight decay included; see ``optimizer_state``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .config import PruningConfig
from .io import atomic_output, read_json, write_json
from .masks_io import MASKS_FILE, check_masks, load_masks, save_masks
from .movement_scores import MovementScores
from .optimizer_state import SECOND_MOMENT_FILL, holds_zeros, is_tidy, refill_interval, tidy
from .sparsity import mask_sparsity, sparsity_report
from .schedules import is_update_step, sparsity_at
from .select import compute_masks, nm_masks, num_to_prune, parse_structure
from .targets import Target, get_parameter, input_axis, resolve_targets
from .errors import InputError, MissingInputError

logger = logging.getLogger(__name__)

STATE_FILE = "pruner_state.json"
MOVEMENT_FILE = "movement_scores.safetensors"  # the scores, and the pruned weights' values under LATENT_PREFIX
LATENT_PREFIX = "latent/"


class Pruner:
    """Masks for the targets of one model, on one schedule.

    Args:
        model: A supported ``transformers`` model (any head class).
        config: What and how to prune.
        masks: Optional keep masks (target name -> bool tensor), e.g. from ``load_masks``; they become the
            current masks (and the only ones, under the ``constant`` schedule).
    """

    def __init__(self, model: nn.Module, config: PruningConfig | None = None, masks: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.config = config or PruningConfig()
        self.targets: list[Target] = resolve_targets(model, self.config.include, self.config.exclude, self.config.layers)
        self.masks: dict[str, torch.Tensor] = {}
        self.last_update_step: int | None = None
        self.target_sparsity = 0.0
        self._params: dict[str, nn.Parameter] = {}
        # Enforced mode keeps the masks also in each weight's dtype and device: multiplying by them is
        # ~9x faster than by a bool mask, and this is the per-step path.
        self._factors: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.optimizer: torch.optim.Optimizer | None = None  # see attach_optimizer
        self._tidied: dict[str, list] = {}  # target -> weak references to its optimizer state, as last tidied
        self._steps_since_tidy = 0
        # movement: S = -Σ W ⊙ ∂L/∂W per target, and the values of the weights it pruned (see ``movement_scores``)
        self._movement = MovementScores()
        self.movement, self.latent = self._movement.scores, self._movement.latent
        self._bind()
        if masks is not None:
            self.set_masks(masks, sparsity=None)

    # -- schedule -------------------------------------------------------------------------------------

    def step(self, step: int) -> None:
        """Call after each optimizer step with the number of steps taken (0 before training).

        Updates the masks when the schedule says so (or on the first call after the schedule started),
        and in ``enforced`` mode re-zeroes pruned weights.
        """
        cfg = self.config
        self._bind()  # cheap; catches parameters replaced since the last step (e.g. resize_token_embeddings)
        if cfg.schedule == "constant":
            if not self.masks:
                self.set_masks({t.name: self._params[t.name].detach() != 0 for t in self.targets}, sparsity=None)
        else:
            started = step >= cfg.start_step
            due = is_update_step(step, schedule=cfg.schedule, start_step=cfg.start_step, end_step=cfg.end_step, every=cfg.update_every)
            if (due and step != self.last_update_step) or (started and self.last_update_step is None):
                self.update_masks(self.sparsity_at(step), step=step)
                return
        if cfg.mode == "enforced":
            held = self._held_by_optimizer()
            stale = self._keep_optimizer_state_tidy(held)
            self.apply(self._needs_rezero(held) + stale, positive_zeros=False)

    def sparsity_at(self, step: int) -> float:
        cfg = self.config
        return sparsity_at(step, schedule=cfg.schedule, final_sparsity=cfg.sparsity,
                           initial_sparsity=cfg.initial_sparsity, start_step=cfg.start_step, end_step=cfg.end_step)

    # -- masks ----------------------------------------------------------------------------------------

    def update_masks(self, sparsity: float, step: int | None = None) -> None:
        """Recompute masks at `sparsity` with the configured criterion and scope, zero the pruned weights,
        and check the realized sparsity."""
        cfg = self.config
        if cfg.criterion in ("wanda", "sparsegpt"):
            raise InputError(f"criterion {cfg.criterion} prunes one-shot over calibration data (prunelab prune "
                             "--calibration, or prunelab.oneshot.prune); the Pruner's schedule cannot use it")
        if cfg.criterion == "soft-movement":
            raise InputError("soft-movement learns its masks (methods.learned_masks.MaskLearner with train_weights, "
                             "driven by integrations.hf_trainer.MaskLearnerCallback, as pretrain, finetune and "
                             "distill-prune run it); the Pruner's schedule cannot use it")
        self._bind()
        weights = {t.name: self._params[t.name].detach() for t in self.targets}
        stats = self._movement.reduced() if cfg.criterion == "movement" else None
        if stats is not None and sparsity > 0 and not any(bool(s.any()) for s in stats.values()):
            raise InputError(f"step {step}: movement's scores are all zero (no backward pass has reached the targets "
                             "yet), so pruning now would choose weights by position; start pruning after training "
                             "has begun (start_step >= 1)")
        # movement's masks are the top-k of its scores at every update (the straight-through top-k): they regrow
        previous = None if cfg.regrow or cfg.criterion == "movement" or not self.masks else self.masks
        if cfg.structure:  # N:M: exact in every group of M along each target's input dimension
            m = parse_structure(cfg.structure)[1]
            pruned = round(sparsity * m)  # the schedule's sparsity in whole weights per group (cubic: 4:4, 3:4, 2:4)
            sparsity = pruned / m
            masks = nm_masks(weights, f"{m - pruned}:{m}", criterion=cfg.criterion, seed=cfg.seed, previous=previous,
                             input_axes={t.name: input_axis(t) for t in self.targets}, stats=stats)
        else:
            masks = compute_masks(weights, sparsity, criterion=cfg.criterion, scope=cfg.scope, seed=cfg.seed,
                                  previous=previous, stats=stats, input_axes={t.name: input_axis(t) for t in self.targets})
        self._check_counts(masks, sparsity)
        self.set_masks(masks, sparsity=sparsity)
        self.last_update_step = step
        logger.debug("step %s: masks updated to sparsity %.4f", step, sparsity)

    def set_masks(self, masks: dict[str, torch.Tensor], sparsity: float | None) -> None:
        """Make `masks` the current masks, zero the weights they prune and verify the result.

        `sparsity` is the target the masks were chosen for (``None``: take it from the masks).
        """
        check_masks(masks, self.targets)
        previous = self.masks
        self.masks = {t.name: masks[t.name].to(device=self._params[t.name].device, dtype=torch.bool) for t in self.targets}
        self._factors = {}
        if sparsity is None:
            sparsity = self.mask_sparsity()
        self.target_sparsity = sparsity
        if self.config.criterion == "movement":
            self._movement.set_aside(self._params, self.masks, previous)
        self.apply()
        self.verify()
        if self.config.mode == "enforced":
            self._tidy_optimizer_state(previous=previous or None)
            if not self._hooks:
                self._register_grad_hooks()

    @torch.no_grad()
    def apply(self, names: list[str] | None = None, *, positive_zeros: bool = True) -> None:
        """Zero the pruned weights in place (one multi-tensor multiply over all targets, or over `names`).

        `positive_zeros` makes every pruned weight +0.0 bit for bit (``-w * 0`` is -0.0), so that saved and
        compressed checkpoints are exact; the per-step re-zeroing skips that second pass (it changes no value).
        """
        names = list(self.masks) if names is None else names
        if self.masks and names:
            params = [self._params[n] for n in names]
            torch._foreach_mul_(params, [self._factor(n) for n in names])
            if positive_zeros:
                torch._foreach_add_(params, 0.0)

    # -- the optimizer --------------------------------------------------------------------------------

    def attach_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Tell the pruner which optimizer trains the model; attach it after loading its state, if resuming.

        In ``enforced`` mode, for an SGD, Adam or AdamW optimizer, ``step`` no longer re-zeroes the weights it
        trains: the pruner tidies its state at pruned positions now, whenever the masks change and whenever the
        optimizer creates or replaces the state, and the optimizer's own update of a pruned weight is then
        exactly 0 (see ``prunelab.optimizer_state``). Adam's second moments read 1.0 there while attached;
        detaching (``None``, or another optimizer) sets them back to 0.0. Weights of other optimizers, or not
        in this one, are still re-zeroed every step. Wrappers with an ``.optimizer`` attribute (accelerate's
        ``AcceleratedOptimizer``) are unwrapped.
        """
        if self.optimizer is not None and self.masks and self.config.mode == "enforced":
            self._tidy_optimizer_state(fill=0.0)
        self.optimizer = getattr(optimizer, "optimizer", optimizer)
        self._tidied, self._steps_since_tidy = {}, 0
        if self.masks and self.config.mode == "enforced":
            self._tidy_optimizer_state()

    def _held_by_optimizer(self) -> list[str]:
        """Targets whose pruned weights the attached optimizer itself keeps at exactly 0."""
        if self.optimizer is None or not holds_zeros(self.optimizer):
            return []
        trained = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return [n for n, p in self._params.items() if id(p) in trained]

    def _needs_rezero(self, held: list[str] | None = None) -> list[str]:
        held = set(self._held_by_optimizer() if held is None else held)
        return [n for n in self.masks if n not in held]

    def _tidy_optimizer_state(self, names: list[str] | None = None, previous: dict[str, torch.Tensor] | None = None,
                              fill: float = SECOND_MOMENT_FILL) -> None:
        for name in self._held_by_optimizer() if names is None else names:
            self._tidied[name] = tidy(self.optimizer, self._params[name], self.masks[name], fill=fill,
                                      previous_keep=None if previous is None else previous.get(name))
        if names is None:
            self._steps_since_tidy = 0

    def _keep_optimizer_state_tidy(self, held: list[str]) -> list[str]:
        """Per step, for the `held` targets: tidy state the optimizer created or replaced since the last tidy,
        and refill the second moments when due. Returns the targets whose weights the stale state may have moved."""
        if not held or not self.masks:
            return []
        self._steps_since_tidy += 1
        stale = [n for n in held if not is_tidy(self.optimizer, self._params[n], self._tidied.get(n))]
        if self._steps_since_tidy >= refill_interval(self.optimizer):
            self._tidy_optimizer_state()
        elif stale:
            self._tidy_optimizer_state(stale)
        return stale

    def _factor(self, name: str) -> torch.Tensor:
        """The mask of `name` as 0/1 in its weight's dtype and device (the model may have moved)."""
        param, factor = self._params[name], self._factors.get(name)
        if factor is None or factor.device != param.device or factor.dtype != param.dtype:
            self.masks[name] = self.masks[name].to(param.device)
            factor = self.masks[name].to(param.dtype)
            if self.config.mode == "enforced":  # free mode applies masks rarely: keep no copy
                self._factors[name] = factor
        return factor

    def _check_counts(self, masks: dict[str, torch.Tensor], sparsity: float) -> None:
        """New masks must prune exactly round(sparsity * n) per scope."""
        pruned = {name: int((~mask).sum()) for name, mask in masks.items()}
        groups = [self.targets] if self.config.scope == "global" else [[t] for t in self.targets]
        for group in groups:
            expected = num_to_prune(sparsity, sum(t.numel for t in group))
            got = sum(pruned[t.name] for t in group)
            if got != expected:
                where = "over all targets" if len(group) > 1 else f"in {group[0].name!r}"
                raise RuntimeError(f"masks prune {got} weights {where}, expected {expected} at sparsity {sparsity}")

    def verify(self) -> None:
        """Check that the live weights of the model are zero wherever the masks prune.

        Raises:
            RuntimeError: a pruned weight is not zero, naming the target (never a silent 0%).
        """
        self._bind()
        for t in self.targets:
            live = get_parameter(self.model, t).detach()
            if int(torch.count_nonzero(live[~self.masks[t.name]])):
                raise RuntimeError(
                    f"weights of {t.name!r} are not zero where pruned; was the parameter replaced after the pruner was built?"
                )

    def mask_sparsity(self) -> float:
        """Fraction of zeros over all current masks (0.0 before the first update)."""
        return mask_sparsity(*self.masks.values())

    def metrics(self, per_target: bool = False) -> dict[str, float]:
        """Namespaced figures for training logs: ``pruning/sparsity`` and optionally ``pruning/sparsity/<name>``."""
        out = {"pruning/sparsity": self.mask_sparsity(), "pruning/target_sparsity": self.target_sparsity}
        if per_target:
            for name, m in self.masks.items():
                out[f"pruning/sparsity/{name}"] = mask_sparsity(m)
        return out

    def sparsity_report(self) -> dict:
        """Realized sparsity of the live weights, per target, kind, layer and overall."""
        return sparsity_report(self.model, self.targets, self.masks)

    # -- enforcement hooks ----------------------------------------------------------------------------

    def _bind(self) -> None:
        """(Re)resolve the live parameters by name; re-hook if any parameter object was replaced."""
        params = {t.name: get_parameter(self.model, t) for t in self.targets}
        replaced = any(params[n] is not self._params.get(n) for n in params)
        self._params = params
        if replaced and self._hooks:
            self.remove_hooks()
            self._register_grad_hooks()
        if self.config.criterion == "movement" and (replaced or not self._movement.tracking):
            self._movement.track(self._params)

    def _register_grad_hooks(self) -> None:
        # After accumulation, in place: before clipping and the optimizer see the gradient.
        def zero_pruned_grad(param: nn.Parameter, name: str) -> None:
            param.grad.mul_(self._factor(name))

        for name, param in self._params.items():
            self._hooks.append(param.register_post_accumulate_grad_hook(lambda p, name=name: zero_pruned_grad(p, name)))

    def remove_hooks(self) -> None:
        """Remove the gradient hooks (the masks stay; weights are no longer held at zero)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- persistence ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "last_update_step": self.last_update_step,
                "target_sparsity": self.target_sparsity, "masks": {n: m.cpu() for n, m in self.masks.items()},
                "movement": {n: s.cpu() for n, s in self.movement.items()},
                "latent": {n: v.cpu() for n, v in self.latent.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.config = PruningConfig.from_dict(state["config"], "pruner state")
        # the saved config decides which targets exist, whatever this pruner was built with
        self.targets = resolve_targets(self.model, self.config.include, self.config.exclude, self.config.layers)
        self.remove_hooks()
        self.masks, self._factors, self._params = {}, {}, {}
        self._bind()
        if state["masks"]:
            self.set_masks(state["masks"], sparsity=state["target_sparsity"])
        self.last_update_step = state["last_update_step"]
        # after set_masks, which set aside the zeros it found
        self._movement.load(state.get("movement") or {}, state.get("latent") or {})

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``masks.safetensors`` and ``pruner_state.json`` into `directory` (e.g. a training checkpoint)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        save_masks(state.pop("masks"), directory / MASKS_FILE)
        movement, latent = state.pop("movement"), state.pop("latent")
        if movement:  # a resumed run continues with the scores accumulated so far, and the pruned weights' values
            from safetensors.torch import save_file

            tensors = {**movement, **{LATENT_PREFIX + n: v for n, v in latent.items()}}
            with atomic_output(directory / MOVEMENT_FILE) as tmp:
                save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp))
        write_json(directory / STATE_FILE, state)

    def load(self, directory: str | os.PathLike) -> None:
        """Restore what ``save`` wrote, so a resumed run continues exactly."""
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise MissingInputError(f"no pruner state in {directory} (expected {STATE_FILE}); was it saved with Pruner.save?")
        state = read_json(state_path, "pruner state")
        state["masks"] = load_masks(directory / MASKS_FILE) if (directory / MASKS_FILE).is_file() else {}
        if (directory / MOVEMENT_FILE).is_file():
            from safetensors.torch import load_file

            tensors = load_file(str(directory / MOVEMENT_FILE))
            state["movement"] = {n: t for n, t in tensors.items() if not n.startswith(LATENT_PREFIX)}
            state["latent"] = {n[len(LATENT_PREFIX):]: t for n, t in tensors.items() if n.startswith(LATENT_PREFIX)}
        self.load_state_dict(state)

