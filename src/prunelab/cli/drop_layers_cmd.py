"""`prunelab drop-layers MODEL --strategy S --count K --out DIR`: remove whole layers (Poor Man's BERT)."""

from __future__ import annotations

from ..methods.layer_drop import STRATEGIES
from .options import add_model, add_out, ints
from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("drop-layers", help="remove whole transformer layers (top, bottom, alternate, symmetric, contribution)")
    add_model(p)
    p.add_argument("--strategy", choices=STRATEGIES, help="which layers to drop (or give --layers)")
    p.add_argument("--count", type=int, help="how many layers to drop")
    p.add_argument("--layers", help="explicit comma-separated 0-based layers to drop, instead of --strategy")
    p.add_argument("--threshold", type=float, help="contribution: drop every layer whose [CLS] cosine similarity exceeds this")
    p.add_argument("--text", help="contribution: text file, one text per line (default: the sample shipped with prunelab)")
    add_out(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.drop_layers import drop_and_save

    layers = ints(args.layers, "--layers", example="9,10,11")
    if (layers is None) == (args.strategy is None):
        raise InputError("give either --strategy (with --count or, for contribution, --threshold) or --layers")
    info = drop_and_save(args.model, args.out, strategy=args.strategy, count=args.count, layers=layers,
                         min_similarity=args.threshold, text=args.text, overwrite=args.overwrite)
    print(f"dropped layers {info['dropped']} of {info['layers_before']} from {args.model}: parameters "
          f"{info['params_before']:,} -> {info['params_after']:,}, forward pass {info['seconds_before'] * 1000:.1f} ms -> "
          f"{info['seconds_after'] * 1000:.1f} ms ({info['seconds_after'] / info['seconds_before']:.2f}x) -> {args.out}")
    return 0
