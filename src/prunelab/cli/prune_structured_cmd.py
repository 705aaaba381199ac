"""`prunelab prune-structured MODEL --heads F --ffn F --out DIR`: remove attention heads and FFN neurons."""

from __future__ import annotations

from ..methods.structured import UNIT_CRITERIA, UNIT_SCOPES
from .options import TASK_HELP, add_model, add_out


def register(sub) -> None:
    p = sub.add_parser("prune-structured", help="remove attention heads and FFN neurons (physically smaller matrices)")
    add_model(p)
    p.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads to remove (default 0)")
    p.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN neurons to remove (default 0)")
    p.add_argument("--criterion", choices=UNIT_CRITERIA, default="magnitude",
                   help="magnitude (norm of a unit's weights), random (seeded), importance (Michel et al. 2019: "
                        "needs --task), from-masks (units a pruned artifact's masks prune to at least --threshold)")
    p.add_argument("--scope", choices=UNIT_SCOPES, default="layer", help="the same fraction in each layer, or one ranking over all")
    p.add_argument("--threshold", type=float, help="from-masks: remove a unit whose weights are pruned to at least this")
    p.add_argument("--allow-empty-attention", action="store_true",
                   help="let a layer lose every head (its attention block is then skipped)")
    p.add_argument("--seed", type=int, default=0, help="random: the seed; importance: the data sample's seed")
    p.add_argument("--task", help="importance: " + TASK_HELP)
    p.add_argument("--data-dir", help="importance: GLUE data directory (default: the hub)")
    p.add_argument("--samples", type=int, default=256, help="importance: training examples to average over")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=128)
    add_out(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.prune_structured import prune_structured

    info = prune_structured(args.model, args.out, heads=args.heads, ffn=args.ffn, criterion=args.criterion,
                            scope=args.scope, seed=args.seed, min_sparsity=args.threshold,
                            allow_empty_attention=args.allow_empty_attention, task=args.task, data_dir=args.data_dir,
                            samples=args.samples, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                            overwrite=args.overwrite)
    print(f"heads per layer {info['heads_before']} -> {info['heads_after']}; FFN width {info['ffn_before']} -> "
          f"{info['ffn_after']}; encoder parameters {info['encoder_params_before']:,} -> {info['encoder_params_after']:,} "
          f"({info['encoder_params_after'] / info['encoder_params_before']:.1%}) -> {args.out}")
    return 0
