"""`prunelab pretrain MODEL --corpus FILE ... --steps N --sparsity S --out DIR`: MLM pre-training while pruning."""

from __future__ import annotations

from .options import add_criterion_and_scope, add_model, add_soft_movement, add_trainer_options, soft_movement_options, trainer_options


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="continue MLM pre-training while pruning (cubic schedule by default)")
    add_model(p)
    p.add_argument("--corpus", nargs="+", default=[], metavar="FILE", help="plain-text files, one document or paragraph per line")
    p.add_argument("--dataset", help="an HF dataset NAME[:CONFIG] as pre-training text (needs prunelab[datasets] and network)")
    p.add_argument("--dataset-split", default="train")
    p.add_argument("--text-column", default="text")
    p.add_argument("--dev-file", nargs="+", default=[], metavar="FILE", help="held-out text for the MLM dev loss (default: the last --dev-fraction of the corpus)")
    p.add_argument("--dev-fraction", type=float, default=0.05)
    p.add_argument("--steps", type=int, required=True, help="optimizer steps in total")
    p.add_argument("--sparsity", type=float, required=True, help="final fraction of zeros in [0, 1]")
    add_criterion_and_scope(p, ("magnitude", "random", "movement", "soft-movement"))
    p.add_argument("--schedule", choices=("cubic", "oneshot"), default="cubic")
    p.add_argument("--structure", metavar="N:M", help="N:M masks, e.g. 2:4, with --sparsity 1 - N/M (cubic: whole weights per group as it rises)")
    p.add_argument("--prune-start", type=int, default=0, help="step pruning starts at (default 0)")
    p.add_argument("--prune-end", type=int, help="step the final sparsity is reached (default min(10000, --steps))")
    p.add_argument("--prune-every", type=int, default=10, help="steps between mask updates (default 10)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--head-warmup-steps", type=int, default=0,
                   help="for a model without an MLM head: train the fresh head this many steps with the encoder frozen first")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (for --resume; soft-movement keeps none)")
    add_soft_movement(p)
    add_trainer_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.common import is_main_process
    from ..pipelines.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        corpus=args.corpus, dataset=args.dataset, dataset_split=args.dataset_split,
        text_column=args.text_column, sparsity=args.sparsity, steps=args.steps,
        criterion=args.criterion, scope=args.scope, schedule=args.schedule, structure=args.structure,
        prune_start=args.prune_start,
        prune_end=args.prune_end, prune_every=args.prune_every, dev_file=args.dev_file, dev_fraction=args.dev_fraction,
        lr=args.lr, warmup_steps=args.warmup_steps, mlm_probability=args.mlm_probability,
        head_warmup_steps=args.head_warmup_steps, save_steps=args.save_steps, **soft_movement_options(args),
        **trainer_options(args),
    )
    metrics = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # one summary per data-parallel launch
        return 0
    if metrics.get("already_finished"):
        print(f"already finished, nothing run: {args.out}/metrics.json")
    before = "n/a" if metrics["dev_loss_before"] is None else f"{metrics['dev_loss_before']:.4f}"
    print(f"MLM dev loss {before} -> {metrics['dev_loss_after']:.4f} at {metrics['sparsity']:.2%} sparsity "
          f"after {metrics['steps']} steps; model and masks in {args.out}/model, metrics in {args.out}/metrics.json")
    return 0
