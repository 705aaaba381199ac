"""Expand a study spec into runs with stable ids and dependencies.

Pre-training runs: one per (sparsity, criterion) needed, the dense one (sparsity 0) shared by every regime.
Fine-tuning runs, per task x sparsity x learning rate x seed:
    pruned                    the magnitude-pruned pre-trained model, masks held
    information_deletion      the same model, masks free
    pruned_after_finetuning   the dense pre-trained model, fine-tuned, pruned to s, fine-tuned on (masks held)
    random                    the randomly pruned pre-trained model, masks held
At sparsity 0 every regime is the same dense run, so it is planned once (regime ``dense``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..glue import get_task
from .spec import StudySpec


@dataclass(frozen=True)
class Run:
    """One unit of work. `params` hold everything the executor needs besides the spec."""

    id: str
    kind: str  # "pretrain" or "finetune"
    params: dict = field(hash=False, compare=False)
    depends_on: tuple[str, ...] = ()


def _s(sparsity: float) -> str:
    return f"s{sparsity:.2f}"


def pretrain_id(sparsity: float, criterion: str) -> str:
    return f"pretrain-{_s(0.0)}" if sparsity == 0 else f"pretrain-{criterion}-{_s(sparsity)}"


def expand(spec: StudySpec) -> list[Run]:
    """All runs of `spec`, pre-training first, in a stable order."""
    pretrains: dict[str, Run] = {}
    finetunes: dict[str, Run] = {}

    def need_pretrain(sparsity: float, criterion: str) -> str:
        run_id = pretrain_id(sparsity, criterion)
        pretrains.setdefault(run_id, Run(run_id, "pretrain", {"sparsity": sparsity, "criterion": criterion}))
        return run_id

    for sparsity in spec.sparsities:
        for regime in spec.regimes:
            regime_name = "dense" if sparsity == 0 else regime
            if regime == "pruned_after_finetuning" and sparsity > 0:
                source, criterion = need_pretrain(0.0, spec.criterion), spec.criterion
            else:
                criterion = "random" if regime == "random" else spec.criterion
                source = need_pretrain(sparsity, criterion)
            for task in spec.finetune.tasks:
                short = get_task(task).name
                for lr in spec.finetune.lrs:
                    for seed in spec.finetune.seeds:
                        run_id = f"finetune-{regime_name}-{_s(sparsity)}-{short}-lr{lr:g}-seed{seed}"
                        params = {"regime": regime_name, "sparsity": sparsity, "task": short, "lr": lr, "seed": seed,
                                  "criterion": criterion, "source": source}
                        finetunes.setdefault(run_id, Run(run_id, "finetune", params, (source,)))
    return [*pretrains.values(), *finetunes.values()]


def describe(runs: list[Run]) -> dict:
    """Counts and the dependency list, for ``prunelab study plan``."""
    users: dict[str, int] = {}
    for run in runs:
        for dep in run.depends_on:
            users[dep] = users.get(dep, 0) + 1
    return {
        "runs": len(runs),
        "pretrain": sum(r.kind == "pretrain" for r in runs),
        "finetune": sum(r.kind == "finetune" for r in runs),
        "items": [{"id": r.id, "kind": r.kind, "depends_on": list(r.depends_on), "used_by": users.get(r.id, 0), **r.params}
                  for r in runs],
    }
