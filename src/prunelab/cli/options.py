"""Command-line options defined once and shared by the subcommands that take them, and their parsers."""

from __future__ import annotations

from ..config import CRITERION_NAMES
from ..select import SCOPES
from ..errors import InputError

MODEL_HELP = "model directory, pruned artifact, hub id, or 'minilm' (the packaged MiniLM-L6)"
TASK_HELP = "GLUE task: CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI (or cola, sst2, ...)"


def add_model(p, name: str = "model", help: str = MODEL_HELP) -> None:
    p.add_argument(name, help=help)


def add_out(p, help: str = "output directory (must be absent or empty)") -> None:
    p.add_argument("--out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")


def add_criterion_and_scope(p, allowed: tuple[str, ...] = ("magnitude", "random", "movement"), scope_default="matrix") -> None:
    """--criterion (any name: a command that cannot use one says why in one line) and --scope."""
    p.add_argument("--criterion", choices=CRITERION_NAMES, default="magnitude", metavar="CRITERION",
                   help=f"which weights go: {', '.join(allowed)} (default magnitude)")
    p.add_argument("--scope", choices=SCOPES, default=scope_default,
                   help="a threshold per matrix, one over all targets, or one per output row (one-shot only)"
                        + ("" if scope_default else "; default: row for wanda, matrix otherwise"))


def add_soft_movement(p) -> None:
    """The options of --criterion soft-movement (distill-prune, finetune, pretrain)."""
    s = p.add_argument_group("soft movement (--criterion soft-movement)")
    s.add_argument("--scores-lr", type=float, default=1e-2, help="learning rate of the mask scores (default 1e-2)")
    s.add_argument("--penalty", type=float, default=1e-4, help="λ of the regulariser ±λ·Σσ(S), switched on and off "
                                                                 "by the target-sparsity control (default 1e-4)")
    s.add_argument("--band", type=float, default=0.01, help="how far above the target the sparsity may go before the "
                                                             "penalty reverses (default 0.01)")


def soft_movement_options(args) -> dict:
    return dict(scores_lr=args.scores_lr, penalty=args.penalty, band=args.band)


def add_trainer_options(p, *, batch_size: int = 32) -> None:
    """The options every training command shares (the ones users of run_glue.py / run_mlm.py expect)."""
    add_out(p, help="run directory")
    p.add_argument("--tokenizer", help="tokenizer directory, when MODEL has none")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fp16", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    p.add_argument("--report-to", default="none", help="Trainer integrations, e.g. tensorboard,wandb (default none)")
    p.add_argument("--logging-steps", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def trainer_options(args) -> dict:
    return dict(model=args.model, out=args.out, tokenizer=args.tokenizer, batch_size=args.batch_size,
                max_seq_len=args.max_seq_len, grad_accum=args.grad_accum, seed=args.seed, fp16=args.fp16, bf16=args.bf16,
                report_to=args.report_to, logging_steps=args.logging_steps)


def add_glue_options(p, *, lrs: str, lr_help: str = "comma-separated learning rates; the best dev score is reported",
                     save_help: str = "save the best learning rate's model with its masks in OUT/model") -> None:
    """The options of the commands that run a learning-rate grid on a GLUE task (finetune, adapt, distill-prune)."""
    p.add_argument("--task", required=True, help=TASK_HELP)
    p.add_argument("--data-dir", help="GLUE data in the download_glue_data.py layout (default: nyu-mll/glue from the hub)")
    p.add_argument("--lr", default=lrs, help=lr_help)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-train-samples", type=int, help="subsample the training set to N examples (seeded)")
    p.add_argument("--save-model", action="store_true", help=save_help)
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="batches in plain random order (default: batches of similar length, as the Trainer's "
                        "group_by_length sampler, which pads far less)")
    add_trainer_options(p)


def glue_options(args) -> dict:
    return dict(task=args.task, data_dir=args.data_dir, lrs=floats(args.lr, "--lr"), epochs=args.epochs,
                max_train_samples=args.max_train_samples, save_model=args.save_model, group_by_length=args.group_by_length,
                **trainer_options(args))


def glue_summary(metrics: dict, what: str) -> str:
    """``<task> (<what>): best lr <lr>: <dev split> <metric> <value> ...`` for a grid's metrics."""
    dev = ", ".join(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "loss")
                    for split, figures in metrics["dev"].items())
    return f"{metrics['task']} ({what}): best lr {metrics['best_lr']:g}: {dev}"


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 2e-5,3e-5") from None


def ints(text: str | None, option: str, example: str = "0,1,2") -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r} is not a comma-separated list of integers, e.g. {example}") from None
