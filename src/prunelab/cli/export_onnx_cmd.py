"""`prunelab export-onnx MODEL --out FILE`: the model as an ONNX graph, checked in onnxruntime."""

from __future__ import annotations

from .options import add_model
from .quantize_cmd import add_int8_options, summary


def register(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model (dense, layer-dropped, structurally pruned) to ONNX")
    add_model(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quantize", choices=("int8",), help="write the INT8 graph instead (as `prunelab quantize`)")
    add_int8_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..deploy.onnx import export_onnx

    if args.quantize:
        from ..deploy.quantize import quantize

        print(summary(quantize(args.model, args.out, overwrite=args.overwrite, task=args.task, data_dir=args.data_dir,
                               max_drop=args.max_drop), args.model))
        return 0
    if args.task or args.data_dir:
        from ..errors import InputError

        raise InputError("--task and --data-dir score the INT8 graph against FP32: they go with --quantize int8")

    info = export_onnx(args.model, args.out, opset=args.opset, overwrite=args.overwrite)
    print(f"{args.model} -> {info['file']} ({info['bytes']:,} bytes, {info['exporter']} exporter; output "
          f"{info['output']}); onnxruntime vs PyTorch on a {info['checked_shape'][0]}x{info['checked_shape'][1]} batch: "
          f"max abs difference {info['max_abs_diff']:.2e}")
    return 0
