"""Expand a study spec into runs with stable ids and dependencies.

Pre-training runs: one per (sparsity, criterion) needed, the dense one (sparsity 0) shared by every regime.
Fine-tuning runs, per task x sparsity x learning rate x seed:
    pruned                    the magnitude-pruned pre-trained model, masks held
    information_deletion      the same model, masks free
    pruned_after_finetuning   the dense pre-trained model, fine-tuned, pruned to s, fine-tuned on (masks held)
    random                    the randomly pruned pre-trained model, masks held
At sparsity 0 every regime is the same dense run, so it is planned once (regime ``dense``).
Regimes that do not vary sparsity are planned once, after those that do:
    layer_drop                per [layer_drop] strategy x count, one ``droplayers`` run that drops that many
                              layers from the dense pre-trained model (Sajjad et al. 2020 drop them from the
                              pre-trained model), fine-tuned per task x learning rate x seed like the dense
                              model; the dense fine-tuning runs are planned too, as its 0-layers reference.
    structured                per [structured] (heads, ffn) pair, one ``structured`` run that removes those fractions
                              of attention heads and FFN neurons from the dense pre-trained model, fine-tuned the same way.
Regimes that start from the dense pre-trained model and reach sparsity s while learning the task:
    adapt                     masks learned over its frozen weights (an ``adapt`` run per task x score lr x seed)
    distill                   pruned (cubic) while fine-tuning, distilled from a ``teacher`` run: the dense model
                              fine-tuned on the task (best of the learning-rate grid), one per task x seed
    pruned_during_finetuning  the same pruning and budget without the teacher (the distill baseline)
Regimes that start from the dense model fine-tuned on the task (the ``teacher`` run of each task x seed):
    oneshot                   pruned one-shot to s (an ``oneshot`` run per task x seed x criterion: Wanda and SparseGPT
                              calibrate on the task's training text) and scored as it is, no retraining
    oneshot_finetuned         that model fine-tuned on, masks held, for [finetune] epochs_after_pruning
The criteria axis (``spec.CRITERION_AXIS``): those regimes run once per criterion of ``criteria`` their command takes;
a run of the spec's ``criterion`` keeps the id it had before the axis existed, another names its criterion
(``finetune-pruned-movement-s0.50-...``); the oneshot regimes' ids always name it.

A new regime is one planner function and one line in ``REGIMES``; a new recipe (what a run does) is one function
and one line in ``recipes.RECIPES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import label
from ..data.glue import get_task
from ..errors import InputError
from .recipes import RECIPES, Run
from .spec import CRITERION_AXIS, StudySpec, regime_criteria
from .spec import REGIMES as REGIME_NAMES

# The parameters a run's id stands for: two runs planned under one id must agree on them.
IDENTITY = ("sparsity", "heads", "ffn", "strategy", "count", "task", "lr", "seed", "criterion")
DENSE_START = ("pruned_after_finetuning", "adapt", "distill", "pruned_during_finetuning", "oneshot",
               "oneshot_finetuned")  # start from pretrain-s0.00
ONESHOT = ("oneshot", "oneshot_finetuned")


def _s(sparsity: float) -> str:
    return f"s{label(sparsity)}"


def pretrain_id(sparsity: float, criterion: str) -> str:
    return f"pretrain-{_s(0.0)}" if sparsity == 0 else f"pretrain-{criterion}-{_s(sparsity)}"


def droplayers_id(strategy: str, count: int) -> str:
    return f"droplayers-{strategy}-k{count}"


def structured_id(criterion: str, heads: float, ffn: float) -> str:
    return f"structured-{criterion}-h{label(heads)}-f{label(ffn)}"


def variant(regime: str, sparsity: float | None = None, strategy: str | None = None, count: int | None = None,
            heads: float | None = None, ffn: float | None = None, criterion: str | None = None) -> str:
    """The part of a fine-tuning run id that names its starting model: ``pruned-s0.50``, ``pruned-movement-s0.50``
    (`criterion` given: see ``criterion_tag``), ``layer_drop-top-k2``, ``structured-h0.50-f0.50``."""
    if regime == "layer_drop":
        return f"layer_drop-{strategy}-k{count}"
    if regime == "structured":
        return f"structured-h{label(heads)}-f{label(ffn)}"
    if sparsity == 0:
        return f"dense-{_s(sparsity)}"
    return f"{regime}-{criterion}-{_s(sparsity)}" if criterion else f"{regime}-{_s(sparsity)}"


def criterion_tag(spec: StudySpec, regime: str, criterion: str) -> str | None:
    """What a run id says of its criterion: nothing for the spec's ``criterion`` (ids as before the criteria axis),
    else the criterion; the oneshot regimes always name it."""
    return criterion if regime in ONESHOT or criterion != spec.criterion else None


def oneshot_id(criterion: str, sparsity: float, task: str, seed: int) -> str:
    return f"oneshot-{criterion}-{_s(sparsity)}-{task}-seed{seed}"


def finetune_id(variant_name: str, task: str, lr: float, seed: int) -> str:
    return f"finetune-{variant_name}-{task}-lr{label(lr, 'g')}-seed{seed}"


def teacher_id(task: str, seed: int) -> str:
    return f"teacher-{task}-seed{seed}"


def learning_rates(spec: StudySpec, regime: str) -> list[float]:
    """The learning-rate grid of a regime's runs: the scores' for adapt, else [finetune]'s."""
    return spec.adapt.lrs if regime == "adapt" else spec.finetune.lrs


class _Plan:
    """The runs planned so far; a run planned twice (the shared dense runs) is kept once, as first planned."""

    def __init__(self, spec: StudySpec):
        self.spec, self.runs = spec, {}

    def add(self, run_id: str, recipe: str, params: dict, depends_on: tuple[str, ...] = ()) -> str:
        planned = self.runs.setdefault(run_id, Run(run_id, recipe, params, depends_on))
        clash = [k for k in IDENTITY if k in params and k in planned.params and params[k] != planned.params[k]]
        if clash:  # never one run standing for two (``label`` keeps ids apart; this guards every future id)
            raise InputError(f"the study plans two runs as {run_id!r}: {clash[0]} {planned.params[clash[0]]!r} and "
                             f"{params[clash[0]]!r}; make the values of the spec distinct")
        return run_id

    def pretrain(self, sparsity: float, criterion: str) -> str:
        return self.add(pretrain_id(sparsity, criterion), "pretrain", {"sparsity": sparsity, "criterion": criterion})

    def teacher(self, task: str, seed: int, start: str) -> str:
        """The dense pre-trained model (run `start`) fine-tuned on `task` over the learning-rate grid."""
        return self.add(teacher_id(task, seed), "teacher", {"task": task, "seed": seed, "start_run": start}, (start,))

    def finetunes(self, variant_name: str, params: dict, start: str, recipe: str = "finetune", teacher: bool = False) -> None:
        """Runs of `recipe` on the model made by run `start`, per task x learning rate x seed; with `teacher`
        each also depends on the task's teacher run (planned here)."""
        for task in self.spec.finetune.tasks:
            short = get_task(task).name
            for lr in learning_rates(self.spec, params["regime"]):
                for seed in self.spec.finetune.seeds:
                    extra, deps = {}, (start,)
                    if teacher:
                        extra["teacher"] = self.teacher(short, seed, start)
                        deps = (start, extra["teacher"])
                    self.add(finetune_id(variant_name, short, lr, seed), recipe,
                             {**params, "task": short, "lr": lr, "seed": seed, "start_run": start, **extra}, deps)


# -- regimes ------------------------------------------------------------------------------------------


def criteria_of(spec: StudySpec, regime: str, sparsity: float) -> list[str]:
    """The criteria `regime` runs with at `sparsity`: its axis (``regime_criteria``); the random regime's own; at
    sparsity 0 one (every criterion's dense run is the same run)."""
    criteria = regime_criteria(spec, regime) if regime in CRITERION_AXIS else ["random" if regime == "random" else spec.criterion]
    return criteria[:1] if sparsity == 0 else criteria


def _plan_pruning(plan: _Plan, regime: str, sparsity: float) -> None:
    spec = plan.spec
    for criterion in criteria_of(spec, regime, sparsity):
        tag = None if regime == "random" else criterion_tag(spec, regime, criterion)
        if sparsity == 0:  # every regime's dense run
            start, criterion, tag = plan.pretrain(0.0, spec.criterion), spec.criterion, None
        elif regime == "pruned_after_finetuning":
            start = plan.pretrain(0.0, spec.criterion)
        else:
            start = plan.pretrain(sparsity, criterion)
        name = "dense" if sparsity == 0 else regime
        plan.finetunes(variant(regime, sparsity, criterion=tag), {"regime": name, "sparsity": sparsity, "criterion": criterion},
                       start)


def _plan_layer_drop(plan: _Plan, regime: str, sparsity: None) -> None:
    spec = plan.spec
    dense = plan.pretrain(0.0, spec.criterion)
    plan.finetunes(variant("dense", 0.0), {"regime": "dense", "sparsity": 0.0, "criterion": spec.criterion}, dense)
    for strategy in spec.layer_drop.strategies:
        for count in spec.layer_drop.counts:
            params = {"regime": regime, "strategy": strategy, "count": count}
            dropped = plan.add(droplayers_id(strategy, count), "droplayers", {**params, "start_run": dense}, (dense,))
            plan.finetunes(variant(regime, strategy=strategy, count=count), params, dropped)


def _plan_structured(plan: _Plan, regime: str, sparsity: None) -> None:
    spec = plan.spec
    dense = plan.pretrain(0.0, spec.criterion)
    plan.finetunes(variant("dense", 0.0), {"regime": "dense", "sparsity": 0.0, "criterion": spec.criterion}, dense)
    st = spec.structured
    for heads, ffn in zip(st.heads, st.ffn):
        params = {"regime": regime, "heads": heads, "ffn": ffn}
        pruned = plan.add(structured_id(st.criterion, heads, ffn), "structured",
                          {**params, "criterion": st.criterion, "scope": st.scope, "start_run": dense}, (dense,))
        plan.finetunes(variant(regime, heads=heads, ffn=ffn), params, pruned)


def _plan_from_dense(plan: _Plan, regime: str, sparsity: float) -> None:
    """adapt, distill, pruned_during_finetuning: from the dense pre-trained model to `sparsity` on the task."""
    spec = plan.spec
    start = plan.pretrain(0.0, spec.criterion)
    if sparsity == 0:  # every regime's dense run
        plan.finetunes(variant(regime, 0.0), {"regime": "dense", "sparsity": 0.0, "criterion": spec.criterion}, start)
        return
    recipe = "adapt" if regime == "adapt" else "prune_while_finetuning"  # with a teacher (distill) or without
    for criterion in criteria_of(spec, regime, sparsity):
        tag = criterion_tag(spec, regime, criterion) if regime in CRITERION_AXIS else None
        plan.finetunes(variant(regime, sparsity, criterion=tag), {"regime": regime, "sparsity": sparsity, "criterion": criterion},
                       start, recipe=recipe, teacher=regime == "distill")


def _plan_oneshot(plan: _Plan, regime: str, sparsity: float) -> None:
    """oneshot, oneshot_finetuned: the task's teacher (the dense model fine-tuned on it) pruned one-shot, then with
    oneshot_finetuned fine-tuned on with masks held. At sparsity 0 the teacher is the row's model."""
    spec = plan.spec
    start = plan.pretrain(0.0, spec.criterion)
    for task in spec.finetune.tasks:
        short = get_task(task).name
        for seed in spec.finetune.seeds:
            teacher = plan.teacher(short, seed, start)
            if sparsity == 0:
                continue
            for criterion in criteria_of(spec, regime, sparsity):
                params = {"regime": "oneshot", "sparsity": sparsity, "criterion": criterion, "task": short, "seed": seed}
                pruned = plan.add(oneshot_id(criterion, sparsity, short, seed), "oneshot", {**params, "start_run": teacher},
                                  (teacher,))
                if regime == "oneshot_finetuned":
                    for lr in learning_rates(spec, regime):
                        plan.add(finetune_id(variant(regime, sparsity, criterion=criterion), short, lr, seed), "finetune",
                                 {**params, "regime": regime, "lr": lr, "start_run": pruned}, (pruned,))


@dataclass(frozen=True)
class Regime:
    """How a regime is planned: ``plan(plan, regime, sparsity)`` adds its runs, once per sparsity of the
    spec when `per_sparsity`, else once (with sparsity ``None``)."""

    plan: Callable[[_Plan, str, float | None], None]
    per_sparsity: bool = True


REGIMES = {
    "pruned": Regime(_plan_pruning),
    "information_deletion": Regime(_plan_pruning),
    "pruned_after_finetuning": Regime(_plan_pruning),
    "random": Regime(_plan_pruning),
    "layer_drop": Regime(_plan_layer_drop, per_sparsity=False),
    "structured": Regime(_plan_structured, per_sparsity=False),
    "adapt": Regime(_plan_from_dense),
    "distill": Regime(_plan_from_dense),
    "pruned_during_finetuning": Regime(_plan_from_dense),
    "oneshot": Regime(_plan_oneshot),
    "oneshot_finetuned": Regime(_plan_oneshot),
}
assert set(REGIMES) == set(REGIME_NAMES), "spec.REGIMES and plan.REGIMES name the same regimes"


def expand(spec: StudySpec) -> list[Run]:
    """All runs of `spec` in a stable order: by recipe (``RECIPES``), then as planned."""
    plan = _Plan(spec)
    for sparsity in spec.sparsities:
        for regime in spec.regimes:
            if REGIMES[regime].per_sparsity:
                REGIMES[regime].plan(plan, regime, sparsity)
    for regime in spec.regimes:
        if not REGIMES[regime].per_sparsity:
            REGIMES[regime].plan(plan, regime, None)
    order = list(RECIPES)
    return sorted(plan.runs.values(), key=lambda r: order.index(r.recipe))


def describe(runs: list[Run]) -> dict:
    """Counts (all, per recipe) and the dependency list, for ``prunelab study plan``."""
    users: dict[str, int] = {}
    for run in runs:
        for dep in run.depends_on:
            users[dep] = users.get(dep, 0) + 1
    return {
        "runs": len(runs),
        **{recipe: sum(r.recipe == recipe for r in runs) for recipe in RECIPES},
        "items": [{"id": r.id, "recipe": r.recipe, "depends_on": list(r.depends_on), "used_by": users.get(r.id, 0), **r.params}
                  for r in runs],
    }
