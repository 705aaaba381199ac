"""Options every training command shares (the ones users of run_glue.py / run_mlm.py expect)."""

from __future__ import annotations


def add_trainer_options(p, *, batch_size: int) -> None:
    p.add_argument("--out", required=True, help="run directory")
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
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")


def trainer_options(args) -> dict:
    return dict(tokenizer=args.tokenizer, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                grad_accum=args.grad_accum, seed=args.seed, fp16=args.fp16, bf16=args.bf16,
                report_to=args.report_to, logging_steps=args.logging_steps)
