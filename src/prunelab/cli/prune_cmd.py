"""`prunelab prune MODEL --sparsity S --out DIR`: one-shot pruning to a saved artifact."""

from __future__ import annotations

from ..oneshot import prune
from ..config import PruningConfig
from ..select import parse_structure
from .compress_cmd import add_codec, summary
from .options import add_criterion_and_scope, add_model, add_out, ints
from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("prune", help="one-shot prune a model and save it with its masks")
    add_model(p)
    p.add_argument("--sparsity", type=float, help="fraction of zeros in [0, 1], e.g. 0.6 (with --structure: 1 - N/M)")
    p.add_argument("--structure", metavar="N:M", help="keep exactly N of every M consecutive weights along the input "
                                                    "dimension, e.g. 2:4 (sparsity 1 - N/M)")
    add_criterion_and_scope(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    p.add_argument("--include", help="comma-separated kinds to prune (default: all)")
    p.add_argument("--exclude", help="comma-separated kinds not to prune, e.g. embeddings,pooler")
    p.add_argument("--layers", help="comma-separated layer indices to prune (default: all)")
    p.add_argument("--compress", action="store_true", help="store it compressed (see `prunelab compress`)")
    add_codec(p)
    add_out(p)
    p.set_defaults(run=run)


def run(args) -> int:
    sparsity = args.sparsity
    if args.structure is not None and sparsity is None:
        n, m = parse_structure(args.structure)
        sparsity = 1 - n / m
    if sparsity is None:
        raise InputError("give --sparsity S (the fraction of zeros) or --structure N:M")
    config = PruningConfig(
        sparsity=sparsity,
        structure=args.structure,
        criterion=args.criterion,
        scope=args.scope,
        schedule="oneshot",
        seed=args.seed,
        include=args.include.split(",") if args.include else None,
        exclude=args.exclude.split(",") if args.exclude else [],
        layers=ints(args.layers, "--layers"),
    )
    info = prune(args.model, config, args.out, overwrite=args.overwrite)
    overall = info["report"]["overall"]
    print(f"pruned {args.model} to {overall['sparsity']:.2%} sparsity over {overall['numel']:,} weights -> {args.out}")
    if args.compress:
        from ..deploy.compressed import compress

        print(summary(compress(args.out, args.out, codec=args.codec, values=args.values, in_place=True), args.out))
    return 0

