"""`prunelab finetune MODEL --task T --data-dir DIR --out DIR`: GLUE fine-tuning in the paper's regimes."""

from __future__ import annotations

from ..scores import CRITERIA
from ..select import SCOPES
from .common import add_trainer_options, trainer_options


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune on a GLUE task with masks held or free, over a learning-rate grid")
    p.add_argument("model", help="a pruned artifact, a model directory, a hub id, or 'minilm'")
    p.add_argument("--task", required=True, help="GLUE task: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI (or cola, sst2, ...)")
    p.add_argument("--data-dir", help="GLUE data in the download_glue_data.py layout (default: nyu-mll/glue from the hub)")
    p.add_argument("--masks", choices=("held", "free"), default="held", help="held: pruned weights stay 0 (pruning); free: they may regrow (information deletion)")
    p.add_argument("--lr", default="2e-5,3e-5,4e-5,5e-5", help="comma-separated learning rates; the best dev score is reported")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs (after pruning, with --prune-after-epochs)")
    p.add_argument("--max-train-samples", type=int, help="subsample the training set to N examples (seeded)")
    p.add_argument("--save-model", action="store_true", help="save the best learning rate's model with its masks in OUT/model")
    p.add_argument("--prune-after-epochs", type=float, help="regime 'pruned after fine-tuning': fine-tune dense N epochs, then prune")
    p.add_argument("--sparsity", type=float, help="with --prune-after-epochs: the sparsity to prune to")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="magnitude")
    p.add_argument("--scope", choices=SCOPES, default="matrix")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    add_trainer_options(p, batch_size=32)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..training.run import is_main_process
    from ..training.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        model=args.model, task=args.task, out=args.out, data_dir=args.data_dir, masks=args.masks,
        lrs=_floats(args.lr, "--lr"), epochs=args.epochs, max_train_samples=args.max_train_samples,
        save_model=args.save_model, prune_after_epochs=args.prune_after_epochs, sparsity=args.sparsity,
        criterion=args.criterion, scope=args.scope, warmup_ratio=args.warmup_ratio, **trainer_options(args),
    )
    metrics = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # one summary per data-parallel launch
        return 0
    dev = ", ".join(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "loss")
                    for split, figures in metrics["dev"].items())
    print(f"{metrics['task']} ({metrics['regime']}): best lr {metrics['best_lr']:g}: {dev}; training loss over the "
          f"whole training set {metrics['train_loss_full']:.4f}; sparsity {metrics['sparsity']:.2%} -> {args.out}/metrics.json")
    return 0


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 2e-5,3e-5") from None
