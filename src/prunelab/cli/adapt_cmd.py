"""`prunelab adapt MODEL --task T --sparsity S --out DIR`: learn a binary mask over frozen weights (Gao et al. 2021)."""

from __future__ import annotations

from .options import add_glue_options, add_model, glue_options, glue_summary


def register(sub) -> None:
    p = sub.add_parser("adapt", help="adapt to a GLUE task by learning a binary mask over the frozen pretrained weights")
    add_model(p, help="a model directory, a hub id, or 'minilm'")
    add_glue_options(p, lrs="1e-3", lr_help="comma-separated learning rates of the mask scores; the best dev score is reported",
                     save_help="save the best learning rate's masked model in OUT/model")
    p.add_argument("--sparsity", type=float, required=True, help="target fraction of zeros over all target weights, in [0, 1)")
    p.add_argument("--exact", action="store_true", help="final mask: exactly the target's lowest scores pruned (default: θ > 0, the paper)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the task head")
    p.add_argument("--penalty", type=float, default=1e-8, help="λ of the sparsity penalty λ·Σθ")
    p.add_argument("--band", type=float, default=0.01, help="realized sparsity this far above the target reverses the penalty")
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which the target ramps up (cubic)")
    p.add_argument("--t-forward", type=float, help="sigmoid temperature of the forward pass (default: the hard step θ > 0)")
    p.add_argument("--t-backward", type=float, default=1.0, help="sigmoid temperature of the backward pass (straight-through)")
    p.add_argument("--init-mean", type=float, default=0.01)
    p.add_argument("--init-std", type=float, default=0.001)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.adapt_by_pruning import AdaptConfig, adapt
    from ..pipelines.common import is_main_process

    cfg = AdaptConfig(sparsity=args.sparsity, exact=args.exact, head_lr=args.head_lr, penalty=args.penalty, band=args.band,
                      ramp=args.ramp, t_forward=args.t_forward, t_backward=args.t_backward, init_mean=args.init_mean,
                      init_std=args.init_std, **glue_options(args))
    metrics = adapt(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():
        return 0
    print(("already finished, nothing run: " if metrics.get("already_finished") else "")
          + f"{glue_summary(metrics, 'adapting by pruning')}; sparsity {metrics['sparsity']:.2%} -> {args.out}/metrics.json")
    return 0
