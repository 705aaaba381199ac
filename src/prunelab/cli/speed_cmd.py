"""`prunelab speed MODEL [MODEL ...]`: forward latency and throughput, interleaved, with a noise floor."""

from __future__ import annotations

from .options import ints
from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("speed", help="forward latency and throughput of models (any prunelab loads, or .onnx files)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories, artifacts, hub ids, 'minilm', or .onnx files")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch (and onnxruntime) threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (medians are reported)")
    p.add_argument("--sparse-execution", choices=["auto", "csr", "coo", "bsr"],
                   help="run pruned linear layers with library sparse kernels: auto = only where measured faster")
    p.add_argument("--autocast", choices=["fp16", "bf16"], help="CUDA mixed precision")
    p.add_argument("--json", help="also write the measurement to this JSON file")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..io import write_json
    from ..deploy.speed import measure_speed, table

    if args.json and not args.json.endswith(".json"):
        raise InputError(f"--json {args.json!r} must name a .json file")
    result = measure_speed(args.models, batch_sizes=ints(args.batch_sizes, "--batch-sizes", example="1,8,32") or [],
                     seq_len=args.seq_len, device=args.device, threads=args.threads, repeats=args.repeats,
                     sparse_execution=args.sparse_execution, autocast=args.autocast)
    print(table(result))
    if args.json:
        write_json(args.json, result)
    return 0
