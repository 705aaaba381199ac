"""`prunelab quantize MODEL_OR_ONNX --out FILE`: INT8 (onnxruntime's dynamic quantization), checked before it is kept."""

from __future__ import annotations

from .options import TASK_HELP


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write a model (or an .onnx file) as an INT8 ONNX file, checked against FP32")
    p.add_argument("model", help="model directory, pruned artifact, hub id, 'minilm', or an .onnx file")
    add_int8_options(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run)


def add_int8_options(p) -> None:
    p.add_argument("--task", help="score FP32 and INT8 on this GLUE task's dev set; " + TASK_HELP)
    p.add_argument("--data-dir", help="GLUE data directory for --task (default: the hub)")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="with --task: the most dev-score points INT8 may lose against FP32 (default 1); more is an error")


def summary(info: dict, source: str) -> str:
    s = info["settings"]
    line = (f"{source} -> {info['file']} (INT8, {info['bytes']:,} bytes, {info['bytes'] / info['fp32_bytes']:.2f}x the "
            f"FP32 graph; weights {s['weight_type']}{', reduce-range' if s['reduce_range'] else ''}{', per channel' if s.get('per_channel') else ''}: {s['why']} "
            f"[{s['cpu']}]); output vs FP32: max abs difference {info['max_abs_diff']:.2e} (outputs up to "
            f"{info['output_scale']:.2e})")
    if "drop" in info:
        line += f"; dev score {info['dev_score_int8']:.2f} vs {info['dev_score_fp32']:.2f} FP32 ({-info['drop']:+.2f})"
        line += "".join(f" (tried first: {t['weight_type']} weights, dev score {t['dev_score']:.2f}, over --max-drop)"
                        for t in info.get("tried", []))
    return line


def run(args) -> int:
    from ..deploy.quantize import quantize

    info = quantize(args.model, args.out, overwrite=args.overwrite, task=args.task, data_dir=args.data_dir,
                    max_drop=args.max_drop)
    print(summary(info, args.model))
    return 0
