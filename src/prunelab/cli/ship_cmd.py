"""`prunelab ship MODEL --task T --data-dir D --out DIR`: every deployment form measured, the fastest within a
dev-score budget written out."""

from __future__ import annotations

from .options import TASK_HELP, ints


def register(sub) -> None:
    p = sub.add_parser("ship", help="measure a fine-tuned classifier in every deployment form (PyTorch, compressed, "
                                    "ONNX, INT8) and write the fastest within a dev-score budget")
    p.add_argument("model", help="a fine-tuned sequence classifier's directory (pruned or not), with its tokenizer")
    p.add_argument("--task", required=True, help="the GLUE task it was fine-tuned on: " + TASK_HELP)
    p.add_argument("--data-dir", required=True, help="GLUE data directory (download_glue_data.py layout); its full "
                                                     "dev set scores each form")
    p.add_argument("--out", required=True, help="output directory (must be absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if prunelab wrote it")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="dev-score points (0-100) a form may lose against the input and still be chosen (default 1)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes timed; the smallest decides (default 1,8)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per timed sequence (default 128)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (medians are reported)")
    p.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..deploy.ship import ship
    from ..deploy.ship_report import notes, table

    result = ship(args.model, args.task, args.data_dir, args.out, max_drop=args.max_drop,
                  batch_sizes=ints(args.batch_sizes, "--batch-sizes", example="1,8") or [], seq_len=args.seq_len,
                  repeats=args.repeats, threads=args.threads, overwrite=args.overwrite)
    print(f"{result['model']} on {result['task']} dev ({result['dev_examples']} examples); CPU, {result['threads']} "
          f"threads, sequence length {result['seq_len']}, median of {result['repeats']} interleaved rounds")
    print(table(result))
    print("\n".join(notes(result)))
    print(f"written to {args.out}: the chosen form, ship.json, ship.md, ship.png")
    return 0
