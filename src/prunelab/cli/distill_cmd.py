"""`prunelab distill-prune MODEL --teacher DIR --task T --sparsity S --out DIR`: knowledge-aware sparse pruning."""

from __future__ import annotations

from ..targets import parse_kinds
from .options import (add_criterion_and_scope, add_glue_options, add_model, add_soft_movement, glue_options, glue_summary,
                      soft_movement_options)


def register(sub) -> None:
    p = sub.add_parser("distill-prune", help="prune while fine-tuning on a GLUE task, distilling a dense fine-tuned teacher (Xu et al. 2021)")
    add_model(p, help="the student: a model directory, a hub id, or 'minilm'")
    p.add_argument("--teacher", required=True,
                   help="a dense classifier fine-tuned on the task (e.g. OUT/model of `prunelab finetune --save-model`); "
                        "'none' runs the baseline: the same pruning with the task loss only")
    add_glue_options(p, lrs="2e-5,3e-5,4e-5,5e-5",
                     save_help="save the best learning rate's pruned student with its masks in OUT/model")
    p.add_argument("--sparsity", type=float, default=0.9, help="final fraction of zeros in [0, 1] (default 0.9)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the logits loss (default 1)")
    for term, default in (("attention", 1.0), ("hidden", 1.0), ("logits", 1.0), ("hard", 0.0)):
        what = {"attention": "attention", "hidden": "hidden-state", "logits": "soft cross-entropy", "hard": "gold-label task"}[term]
        p.add_argument(f"--alpha-{term}", type=float, default=default, help=f"weight of the {what} loss (default {default:g})")
    p.add_argument("--prune-start", type=float, default=0.0, help="fraction of training before pruning starts "
                   "(default 0; Sanh et al. train the first 10%% dense, so movement's scores learn first)")
    p.add_argument("--prune-end", type=float, default=0.7, help="fraction of training by which the sparsity is reached (default 0.7)")
    p.add_argument("--prune-every", type=int, default=10, help="steps between mask updates (default 10)")
    add_criterion_and_scope(p, ("magnitude", "random", "movement", "soft-movement"))
    p.add_argument("--exclude", help="comma-separated kinds not to prune, e.g. embeddings,pooler (Sanh et al. 2020 prune "
                   "the encoder's linear layers only)")
    add_soft_movement(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipelines.common import is_main_process
    from ..pipelines.distill_prune import DistillConfig, distill_prune

    cfg = DistillConfig(
        teacher=None if args.teacher.lower() == "none" else args.teacher, sparsity=args.sparsity,
        temperature=args.temperature, alpha_attention=args.alpha_attention, alpha_hidden=args.alpha_hidden,
        alpha_logits=args.alpha_logits, alpha_hard=args.alpha_hard, prune_start=args.prune_start, prune_end=args.prune_end, prune_every=args.prune_every,
        criterion=args.criterion, scope=args.scope, exclude=sorted(parse_kinds(args.exclude, "--exclude")), **soft_movement_options(args), **glue_options(args),
    )
    metrics = distill_prune(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # one summary per data-parallel launch
        return 0
    print(("already finished, nothing run: " if metrics.get("already_finished") else "")
          + f"{glue_summary(metrics, metrics['method'])}; sparsity {metrics['sparsity']:.2%}; "
          f"{metrics['seconds_per_step']:.3f} s/step ({metrics['teacher_share']:.0%} teacher); peak memory "
          f"{metrics['peak_memory_mb']:.0f} MiB -> {args.out}/metrics.json")
    return 0
