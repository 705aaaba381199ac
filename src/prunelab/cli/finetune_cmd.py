"""`prunelab finetune MODEL --task T --data-dir DIR --out DIR`: GLUE fine-tuning in the paper's regimes."""

from __future__ import annotations

from .options import (add_criterion_and_scope, add_glue_options, add_model, add_soft_movement, glue_options, glue_summary,
                      soft_movement_options)


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune on a GLUE task with masks held or free, over a learning-rate grid")
    add_model(p, help="a pruned artifact, a model directory, a hub id, or 'minilm'")
    add_glue_options(p, lrs="2e-5,3e-5,4e-5,5e-5")
    p.add_argument("--masks", choices=("held", "free"), default="held", help="held: pruned weights stay 0 (pruning); free: they may regrow (information deletion)")
    p.add_argument("--prune-after-epochs", type=float, help="regime 'pruned after fine-tuning': fine-tune dense N epochs, then prune (--epochs more)")
    p.add_argument("--sparsity", type=float, help="with --prune-after-epochs: the sparsity to prune to")
    add_criterion_and_scope(p, ("magnitude", "random", "movement", "soft-movement"))
    add_soft_movement(p)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.common import is_main_process
    from ..pipelines.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(masks=args.masks, prune_after_epochs=args.prune_after_epochs, sparsity=args.sparsity,
                         criterion=args.criterion, scope=args.scope, warmup_ratio=args.warmup_ratio,
                         **soft_movement_options(args), **glue_options(args))
    metrics = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # one summary per data-parallel launch
        return 0
    print(("already finished, nothing run: " if metrics.get("already_finished") else "")
          + f"{glue_summary(metrics, metrics['regime'])}; training loss over the whole training set "
          f"{metrics['train_loss_full']:.4f}; sparsity {metrics['sparsity']:.2%} -> {args.out}/metrics.json")
    return 0
