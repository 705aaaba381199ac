"""`prunelab prune MODEL --sparsity S --out DIR`: one-shot pruning to a saved artifact."""

from __future__ import annotations

from ..artifact import prune
from ..config import PruningConfig
from ..scores import CRITERIA
from ..select import SCOPES


def register(sub) -> None:
    p = sub.add_parser("prune", help="one-shot prune a model and save it with its masks")
    p.add_argument("model", help="model directory, hub id, or 'minilm' (the packaged MiniLM-L6)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of zeros in [0, 1], e.g. 0.6")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="magnitude")
    p.add_argument("--scope", choices=SCOPES, default="matrix", help="a threshold per matrix, or one over all targets")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    p.add_argument("--include", help="comma-separated kinds to prune (default: all)")
    p.add_argument("--exclude", help="comma-separated kinds not to prune, e.g. embeddings,pooler")
    p.add_argument("--layers", help="comma-separated layer indices to prune (default: all)")
    p.add_argument("--out", required=True, help="output directory (must be absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run)


def run(args) -> int:
    config = PruningConfig(
        sparsity=args.sparsity,
        criterion=args.criterion,
        scope=args.scope,
        schedule="oneshot",
        seed=args.seed,
        include=args.include.split(",") if args.include else None,
        exclude=args.exclude.split(",") if args.exclude else [],
        layers=_parse_layers(args.layers),
    )
    info = prune(args.model, config, args.out, overwrite=args.overwrite)
    overall = info["report"]["overall"]
    print(f"pruned {args.model} to {overall['sparsity']:.2%} sparsity over {overall['numel']:,} weights -> {args.out}")
    return 0


def _parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
