"""`prunelab prune MODEL --sparsity S --out DIR`: one-shot pruning to a saved artifact."""

from __future__ import annotations

from ..data.calibration import SAMPLES, Calibration
from ..oneshot import ONE_SHOT, prune
from ..config import PruningConfig, one_shot_scope
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
    add_criterion_and_scope(p, ONE_SHOT, scope_default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion and of the calibration sample")
    c = p.add_argument_group("calibration (wanda, sparsegpt)")
    c.add_argument("--calibration", metavar="TASK", help="a GLUE task whose training sentences calibrate, e.g. SST-2")
    c.add_argument("--data-dir", help="GLUE data directory (download_glue_data.py layout); default: the hub")
    c.add_argument("--calibration-corpus", nargs="+", metavar="FILE", help="text files whose token blocks calibrate")
    c.add_argument("--calibration-samples", type=int, default=SAMPLES, help=f"sequences (default {SAMPLES})")
    c.add_argument("--max-seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)")
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
    if args.data_dir and not args.calibration:
        raise InputError("--data-dir names the GLUE data of --calibration TASK; give --calibration too, or drop it")
    calibration = None
    if args.calibration or args.calibration_corpus:
        calibration = Calibration(task=args.calibration, data_dir=args.data_dir, corpus=tuple(args.calibration_corpus or ()),
                                  samples=args.calibration_samples, max_seq_len=args.max_seq_len, seed=args.seed)
    config = PruningConfig(
        sparsity=sparsity,
        structure=args.structure,
        criterion=args.criterion,
        scope=args.scope or one_shot_scope(args.criterion, args.structure),
        schedule="oneshot",
        seed=args.seed,
        include=args.include.split(",") if args.include else None,
        exclude=args.exclude.split(",") if args.exclude else [],
        layers=ints(args.layers, "--layers"),
    )
    info = prune(args.model, config, args.out, overwrite=args.overwrite, calibration=calibration, progress=True)
    overall = info["report"]["overall"]
    print(f"pruned {args.model} to {overall['sparsity']:.2%} sparsity over {overall['numel']:,} weights -> {args.out}")
    if info.get("fallback", {}).get("targets"):
        print(f"  {len(info['fallback']['targets'])} targets outside the encoder's linear layers pruned by magnitude "
              f"(e.g. {info['fallback']['targets'][0]}); --exclude their kinds to keep them dense")
    if args.compress:
        from ..deploy.compressed import compress

        print(summary(compress(args.out, args.out, codec=args.codec, values=args.values, in_place=True), args.out))
    return 0

