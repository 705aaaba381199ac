"""INT8: onnxruntime's dynamic quantization of an exported model (weights INT8, activations quantized at run time).

``quantize(source, out)`` takes a model prunelab loads (exported first, checked as ``export-onnx`` checks) or an
``.onnx`` file, and writes the quantized graph atomically, only once it is checked: its output against the FP32
graph's on sample inputs and, with a GLUE task, its dev score beside the FP32 graph's (a drop of more than
`max_drop` points is an error, and nothing is written).

The settings follow onnxruntime's advice for the CPU it runs on (``cpu_int8_settings``): with VNNI (AVX512-VNNI or
AVX-VNNI) signed 8-bit weights (U8S8), which those instructions multiply without saturating; on AVX2 without VNNI,
unsigned weights (U8U8), which avoid the saturation of the U8S8 path there (its alternative, 7-bit reduce-range
weights, costs more accuracy). The result records which was used and why.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..artifact import resolve_model_path
from ..errors import InputError, MissingInputError
from ..io import atomic_output, check_apart
from .onnx import _inputs, _requirements, export_onnx

MAX_DROP = 1.0  # dev-score points the INT8 graph may lose against the FP32 one (with a task)


def cpu_int8_settings(flags: set[str] | None = None) -> dict:
    """onnxruntime's dynamic-quantization settings for this CPU (its ``/proc/cpuinfo`` flags, or `flags`)."""
    if flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
            flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
        except OSError:
            flags = set()
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if vnni:
        return {"weight_type": "QInt8", "reduce_range": False, "per_channel": True, "cpu": ", ".join(vnni),
                "why": ("VNNI multiplies unsigned activations by signed 8-bit weights (U8S8) without saturating; a "
                        "scale per output channel keeps them accurate (one per tensor lost 1.6 points on MiniLM/SST-2)")}
    return {"weight_type": "QUInt8", "reduce_range": False, "per_channel": False,
            "cpu": "avx2" if "avx2" in flags else "no avx2",
            "why": "without VNNI the U8S8 path can saturate; unsigned weights (U8U8) avoid it at full 8-bit range"}


U8U8 = {"weight_type": "QUInt8", "reduce_range": False, "per_channel": False, "cpu": "any",
        "why": "unsigned weights (U8U8) at full 8-bit range, tried as the recommended ones lost more than --max-drop"}


def _quantize_dynamic(quantize_dynamic, types, fp32: Path, int8: Path, settings: dict) -> None:
    root = logging.getLogger()  # onnxruntime's advice to pre-process (shape inference) is logged on the root
    level = root.level  # logger at every call: not the user's concern
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=getattr(types, settings["weight_type"]),
                         reduce_range=settings["reduce_range"], per_channel=settings.get("per_channel", False))
    finally:
        root.setLevel(level)


def quantize(source: str, out: str | os.PathLike, *, overwrite: bool = False, task: str | None = None,
             data_dir: str | None = None, max_drop: float = MAX_DROP, settings: dict | None = None) -> dict:
    """Write `source` (a model directory, artifact, hub id or alias, or an ``.onnx`` file) as an INT8 ONNX file `out`.

    Returns:
        ``file``, ``bytes``, ``fp32_bytes``, ``settings``, ``max_abs_diff`` (INT8 against FP32 on a sample batch),
        ``output_scale`` (the FP32 output's largest absolute value) and, with `task`, ``dev_score_fp32`` and
        ``dev_score_int8`` (percent), ``drop`` and ``tried`` (the settings tried before, with their scores: with a
        task, where the CPU's recommended weights lose more than `max_drop`, unsigned weights are tried next).
    """
    ort = _requirements()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"--out {str(out)!r} must name a .onnx file")
    is_onnx = str(source).endswith(".onnx")
    if is_onnx and not Path(source).is_file():
        raise MissingInputError(f"{source} is not a file; pass an .onnx file or a model directory")
    check_apart(out, [source if is_onnx else resolve_model_path(source), data_dir])
    if out.exists() and (out.is_dir() or not overwrite):
        raise InputError(f"--out {str(out)!r} exists; choose another path or pass --overwrite")
    if task is not None and is_onnx:
        raise InputError("--task scores the model on its dev set with the model's tokenizer: pass the model directory, "
                         "not an .onnx file")
    if not max_drop >= 0:
        raise InputError(f"--max-drop {max_drop!r} must be a number of points >= 0")
    first = settings or cpu_int8_settings()
    # With a task the dev score decides: the CPU's recommended weights first, and, where they lose more than
    # max_drop, unsigned weights at full range (U8U8: no saturation on any CPU) before giving up.
    attempts = [first] + ([U8U8] if task is not None and settings is None and first["weight_type"] != "QUInt8" else [])
    with tempfile.TemporaryDirectory(prefix="prunelab-int8-") as tmp:
        fp32 = Path(source) if is_onnx else Path(export_onnx(source, Path(tmp) / "fp32.onnx")["file"])
        sessions = {"fp32": ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])}
        ids, mask = _inputs(_vocabulary(fp32), 3, 11, seed=1)  # ids the graph's word embeddings hold
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        want = sessions["fp32"].run(None, feed)[0]
        dev = dev_examples(task, data_dir) if task is not None else None
        fp32_score = dev_score(sessions["fp32"], source, task, data_dir, examples=dev) if task is not None else None
        tried = []
        for n, attempt in enumerate(attempts):
            int8 = Path(tmp) / f"int8-{n}.onnx"
            _quantize_dynamic(quantize_dynamic, QuantType, fp32, int8, attempt)
            session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
            got = session.run(None, feed)[0]
            info = {"file": str(out), "bytes": int8.stat().st_size, "fp32_bytes": fp32.stat().st_size, "settings": attempt,
                    "max_abs_diff": float(np.abs(got - want).max()), "output_scale": float(np.abs(want).max())}
            if task is None:
                break
            score = dev_score(session, source, task, data_dir, examples=dev)
            info.update(dev_score_fp32=fp32_score, dev_score_int8=score, drop=fp32_score - score, tried=tried)
            tried = [*tried, {"weight_type": attempt["weight_type"], "reduce_range": attempt["reduce_range"], "dev_score": score}]
            if info["drop"] <= max_drop:
                break
        else:
            scores = ", ".join(f"{t['weight_type']} weights {t['dev_score']:.2f}" for t in tried)
            raise InputError(f"the INT8 graph scores below {task} dev's {fp32_score:.2f} in FP32 by more than --max-drop "
                             f"{max_drop:g} points ({scores}); nothing written (raise --max-drop to keep it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as target:
            shutil.copyfile(int8, target)
    return info


def _vocabulary(path: Path, default: int = 60) -> int:
    """The rows of the word embeddings an ONNX graph gathers ``input_ids`` from (`default` where none is found: ids
    every vocabulary has)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    rows = {t.name: t.dims[0] for t in graph.initializer if t.dims}
    return next((rows[n.input[0]] for n in graph.node
                 if n.op_type == "Gather" and n.input[1] == "input_ids" and n.input[0] in rows), default)


def dev_score(session, model: str, task_name: str, data_dir: str | None, batch_size: int = 64, max_length: int = 128,
              *, examples: list | None = None, tokenizer=None) -> float:
    """The task's dev score (percent, the mean of its official metrics) of an ONNX classifier `session` (anything with
    onnxruntime's ``run(None, feed)``), tokenized with `model`'s tokenizer (the graph takes ``input_ids`` and
    ``attention_mask`` only). `examples` (``dev_examples``) and `tokenizer` spare reading them again."""
    from ..artifact import load_tokenizer
    from ..data.glue import compute_metrics, get_task

    task = get_task(task_name)
    tokenizer = tokenizer or load_tokenizer(model)
    if tokenizer is None:
        raise InputError(f"{model!r} has no tokenizer files; --task needs them")
    dev = examples if examples is not None else dev_examples(task_name, data_dir)
    logits = []
    for start in range(0, len(dev), batch_size):
        part = dev[start:start + batch_size]
        firsts, seconds = [a for a, _, _ in part], [b for _, b, _ in part]
        enc = tokenizer(firsts, seconds if any(s is not None for s in seconds) else None, padding=True,
                        truncation=True, max_length=max_length, return_tensors="np")
        logits.append(session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                         "attention_mask": enc["attention_mask"].astype(np.int64)})[0])
    labels = np.array([label for _, _, label in dev])
    return 100 * compute_metrics(task, np.concatenate(logits), labels)["score"]


def dev_examples(task_name: str, data_dir: str | None) -> list:
    """The examples of the task's (first) dev split: from `data_dir`, or from the hub without one."""
    from ..data.glue import get_task, read_hub_split, read_split

    task = get_task(task_name)
    split = task.dev_splits[0]
    return read_split(data_dir, task, split) if data_dir is not None else read_hub_split(task, split)


QUANTIZED_MATMULS = ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm")


def onnx_kind(path: str | os.PathLike) -> str:
    """What an ONNX file is, read from its graph: ``onnx int8 (QInt8 weights, 14 quantized matmuls)`` for a graph
    whose matrix products run in 8 bits (the weight type read from their weight initializers), else ``onnx fp32``
    (or the type of its float weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    types = {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in graph.initializer}
    quantized = [n for n in graph.node if n.op_type in QUANTIZED_MATMULS]
    if quantized:
        weights = sorted({types[n.input[1]] for n in quantized if len(n.input) > 1 and n.input[1] in types})
        names = ", ".join({"INT8": "QInt8", "UINT8": "QUInt8"}.get(w, w) for w in weights) or "unknown"
        return f"onnx int8 ({names} weights, {len(quantized)} quantized matmuls)"
    floats = sorted({t for t in types.values() if t in ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")})
    return "onnx " + ("/".join({"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "DOUBLE": "fp64"}[t]
                               for t in floats) or "graph")
