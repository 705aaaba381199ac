"""`prunelab adapt MODEL --task T --sparsity S --out DIR`: learn a binary mask over frozen weights (Gao et al. 2021)."""

from __future__ import annotations

from .common import add_trainer_options, trainer_options
from .finetune_cmd import _floats


def register(sub) -> None:
    p = sub.add_parser("adapt", help="adapt to a GLUE task by learning a binary mask over the frozen pretrained weights")
    p.add_argument("model", help="a model directory, a hub id, or 'minilm'")
    p.add_argument("--task", required=True, help="GLUE task: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI")
    p.add_argument("--data-dir", help="GLUE data in the download_glue_data.py layout (default: nyu-mll/glue from the hub)")
    p.add_argument("--sparsity", type=float, required=True, help="target fraction of zeros over all target weights, in [0, 1)")
    p.add_argument("--exact", action="store_true", help="final mask: exactly the target's lowest scores pruned (default: θ > 0, the paper)")
    p.add_argument("--lr", default="1e-3", help="comma-separated learning rates of the mask scores; the best dev score is reported")
    p.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the task head")
    p.add_argument("--penalty", type=float, default=1e-8, help="λ of the sparsity penalty λ·Σθ")
    p.add_argument("--band", type=float, default=0.01, help="realized sparsity this far above the target reverses the penalty")
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which the target ramps up (cubic)")
    p.add_argument("--t-forward", type=float, help="sigmoid temperature of the forward pass (default: the hard step θ > 0)")
    p.add_argument("--t-backward", type=float, default=1.0, help="sigmoid temperature of the backward pass (straight-through)")
    p.add_argument("--init-mean", type=float, default=0.01)
    p.add_argument("--init-std", type=float, default=0.001)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-train-samples", type=int, help="subsample the training set to N examples (seeded)")
    p.add_argument("--save-model", action="store_true", help="save the best learning rate's masked model in OUT/model")
    add_trainer_options(p, batch_size=32)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..training.adapt import AdaptConfig, adapt
    from ..training.run import is_main_process

    cfg = AdaptConfig(
        model=args.model, task=args.task, out=args.out, data_dir=args.data_dir, sparsity=args.sparsity, exact=args.exact,
        lrs=_floats(args.lr, "--lr"), head_lr=args.head_lr, penalty=args.penalty, band=args.band, ramp=args.ramp,
        t_forward=args.t_forward, t_backward=args.t_backward, init_mean=args.init_mean, init_std=args.init_std,
        epochs=args.epochs, max_train_samples=args.max_train_samples, save_model=args.save_model, **trainer_options(args),
    )
    metrics = adapt(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():
        return 0
    dev = ", ".join(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "loss")
                    for split, figures in metrics["dev"].items())
    print(f"{metrics['task']} (adapting by pruning): best lr {metrics['best_lr']:g}: {dev}; sparsity "
          f"{metrics['sparsity']:.2%} -> {args.out}/metrics.json")
    return 0
