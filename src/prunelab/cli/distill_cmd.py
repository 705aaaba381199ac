"""`prunelab distill-prune MODEL --teacher DIR --task T --sparsity S --out DIR`: knowledge-aware sparse pruning."""

from __future__ import annotations

from ..scores import CRITERIA
from ..select import SCOPES
from .common import add_trainer_options, trainer_options
from .finetune_cmd import _floats


def register(sub) -> None:
    p = sub.add_parser("distill-prune", help="prune while fine-tuning on a GLUE task, distilling a dense fine-tuned teacher (Xu et al. 2021)")
    p.add_argument("model", help="the student: a model directory, a hub id, or 'minilm'")
    p.add_argument("--teacher", required=True,
                   help="a dense classifier fine-tuned on the task (e.g. OUT/model of `prunelab finetune --save-model`); "
                        "'none' runs the baseline: the same pruning with the task loss only")
    p.add_argument("--task", required=True, help="GLUE task: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI (or cola, sst2, ...)")
    p.add_argument("--data-dir", help="GLUE data in the download_glue_data.py layout (default: nyu-mll/glue from the hub)")
    p.add_argument("--sparsity", type=float, default=0.9, help="final fraction of zeros in [0, 1] (default 0.9)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the logits loss (default 1)")
    p.add_argument("--alpha-attention", type=float, default=1.0, help="weight of the attention loss (default 1)")
    p.add_argument("--alpha-hidden", type=float, default=1.0, help="weight of the hidden-state loss (default 1)")
    p.add_argument("--alpha-logits", type=float, default=1.0, help="weight of the soft cross-entropy loss (default 1)")
    p.add_argument("--alpha-hard", type=float, default=0.0, help="weight of the gold-label task loss (default 0)")
    p.add_argument("--prune-end", type=float, default=0.7, help="fraction of training by which the sparsity is reached (default 0.7)")
    p.add_argument("--prune-every", type=int, default=10, help="steps between mask updates (default 10)")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="magnitude")
    p.add_argument("--scope", choices=SCOPES, default="matrix")
    p.add_argument("--lr", default="2e-5,3e-5,4e-5,5e-5", help="comma-separated learning rates; the best dev score is reported")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-train-samples", type=int, help="subsample the training set to N examples (seeded)")
    p.add_argument("--save-model", action="store_true", help="save the best learning rate's pruned student with its masks in OUT/model")
    add_trainer_options(p, batch_size=32)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..training.distill import DistillConfig, distill_prune
    from ..training.run import is_main_process

    cfg = DistillConfig(
        model=args.model, teacher=None if args.teacher.lower() == "none" else args.teacher, task=args.task,
        out=args.out, data_dir=args.data_dir, sparsity=args.sparsity, temperature=args.temperature,
        alpha_attention=args.alpha_attention, alpha_hidden=args.alpha_hidden, alpha_logits=args.alpha_logits,
        alpha_hard=args.alpha_hard, prune_end=args.prune_end, prune_every=args.prune_every, criterion=args.criterion,
        scope=args.scope, lrs=_floats(args.lr, "--lr"), epochs=args.epochs, max_train_samples=args.max_train_samples,
        save_model=args.save_model, **trainer_options(args),
    )
    metrics = distill_prune(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # one summary per data-parallel launch
        return 0
    dev = ", ".join(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "loss")
                    for split, figures in metrics["dev"].items())
    print(f"{metrics['task']} ({metrics['method']}): best lr {metrics['best_lr']:g}: {dev}; sparsity {metrics['sparsity']:.2%}; "
          f"{metrics['seconds_per_step']:.3f} s/step ({metrics['teacher_share']:.0%} teacher); peak memory "
          f"{metrics['peak_memory_mb']:.0f} MiB -> {args.out}/metrics.json")
    return 0
