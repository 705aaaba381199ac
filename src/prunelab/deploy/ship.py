"""Ship a fine-tuned classifier: every deployment form prunelab has, measured alike, and the best one written out.

``ship(model, task, data_dir, out)`` builds each form of ``FORMS`` that applies to `model` (the input as loaded,
its compressed artifact, its ONNX export, its INT8 ONNX file, its vocabulary cut to the task and that cut as INT8),
scores each on the task's full dev set (the scoring of ``quantize --task``: ``input_ids`` and ``attention_mask``
only, so every form reads the same inputs), reads its
bytes on disk, and times the forms that run differently in one ``measure_speed`` call (interleaved, beside a
noise-floor copy, medians). ``choose`` picks the fastest form (median at the smallest batch size) whose dev score is
within `max_drop` points of the input's; the input itself always qualifies. `out` gets the chosen form's files, the
table as ``ship.json`` and ``ship.md``, and ``ship.png`` (``ship_report``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifact import COMPRESSED_FILE, DENSE_FILE, from_pretrained, is_compressed, load_config, load_tokenizer, resolve_model_path
from ..errors import InputError, MissingInputError
from ..io import atomic_directory, check_output_dir, write_json, write_text
from ..masks_io import MASKS_FILE
from .speed import NOISE_FLOOR, _check, describe, measure_speed, model_bytes

logger = logging.getLogger(__name__)
MAX_DROP = 1.0  # dev-score points a shipped form may lose against the input


@dataclass
class Context:
    """What every form's `build` reads: the input, its tokenizer, a scratch folder, and the forms built before it."""

    source: str  # the model directory as given
    path: Path  # resolved
    pruned: bool  # it has masks (or is compressed): sparse execution is tried
    tokenizer: object
    scratch: Path
    built: dict  # form name -> Built, in FORMS order
    task: str = ""  # the GLUE task and its data (a vocabulary cut keeps the tokens of its training text)
    data_dir: str | None = None


@dataclass
class Built:
    """A form made: `run` is what loads and runs it (a model directory or an ``.onnx`` file), `ship` the file or
    folder copied into the output as `name`; `timed_as` names a form whose latency it has (same tensors in memory)."""

    run: str
    ship: Path
    name: str
    timed_as: str | None = None
    tokenizer: object | None = None  # its own (a vocabulary cut re-indexes it); None: the input's


@dataclass(frozen=True)
class Form:
    """A deployment form: `why_not(ctx)` says why it does not apply to the input (``None``: it does), `build(ctx)`
    makes it in ``ctx.scratch``."""

    name: str
    label: str
    why_not: Callable[[Context], str | None]
    build: Callable[[Context], Built]


def _as_loaded(ctx: Context) -> Built:
    return Built(str(ctx.path), ctx.path, "model")


def _compressed(ctx: Context) -> Built:
    from .compressed import compress

    folder = ctx.scratch / "compressed"
    compress(str(ctx.path), folder)
    return Built(str(folder), folder, "model", timed_as="pytorch")  # lossless: decodes to the very same tensors


def _onnx(ctx: Context) -> Built:
    from .onnx import export_onnx

    file = export_onnx(str(ctx.path), ctx.scratch / "fp32.onnx")["file"]
    return Built(file, Path(file), "model.onnx")


def _int8(ctx: Context) -> Built:
    from .quantize import quantize

    info = quantize(ctx.built["onnx"].run, ctx.scratch / "int8.onnx")
    return Built(info["file"], Path(info["file"]), "model.onnx")


def _vocab(ctx: Context) -> Built:
    from .vocab import prune_vocab

    folder = ctx.scratch / "vocab"
    prune_vocab(str(ctx.path), folder, task=ctx.task, data_dir=ctx.data_dir)
    return Built(str(folder), folder, "model", tokenizer=load_tokenizer(str(folder)))


def _vocab_int8(ctx: Context) -> Built:
    from .onnx import export_onnx
    from .quantize import quantize

    cut = ctx.built["vocab"]
    fp32 = export_onnx(cut.run, ctx.scratch / "vocab-fp32.onnx")["file"]
    info = quantize(fp32, ctx.scratch / "vocab-int8.onnx")
    return Built(info["file"], Path(info["file"]), "model.onnx", tokenizer=cut.tokenizer)


# The forms, in the table's order; the first is the input, which every other is measured against. A new form is one
# entry here.
FORMS: list[Form] = [
    Form("pytorch", "PyTorch FP32 (as loaded)", lambda ctx: None, _as_loaded),
    Form("compressed", "compressed artifact (runs as PyTorch FP32)",
         lambda ctx: ("the input is already compressed" if is_compressed(ctx.path) else
                      None if (ctx.path / DENSE_FILE).is_file() else f"the input has no single {DENSE_FILE} to compress"),
         _compressed),
    Form("onnx", "ONNX FP32 (onnxruntime)", lambda ctx: None, _onnx),
    Form("int8", "ONNX INT8 (onnxruntime dynamic quantization)",
         lambda ctx: None if "onnx" in ctx.built else "needs the ONNX FP32 export, which was not made", _int8),
    Form("vocab", "vocabulary cut to the task's training text (PyTorch FP32)", lambda ctx: None, _vocab),
    Form("vocab-int8", "vocabulary cut, then ONNX INT8",
         lambda ctx: None if "vocab" in ctx.built else "needs the vocabulary cut, which was not made", _vocab_int8),
]


def choose(rows: list[dict], max_drop: float, batch: int) -> int:
    """The index of the row to ship: the fastest (``latency_ms[str(batch)]``) of the rows whose ``drop`` (dev-score
    points below the input's) is at most `max_drop`; ties go to fewer ``bytes``, then to the earlier row. The first
    row is the input: it always qualifies, so when nothing else does, it is shipped."""
    allowed = [i for i, r in enumerate(rows) if i == 0 or r["drop"] <= max_drop]
    return min(allowed, key=lambda i: (rows[i]["latency_ms"][str(batch)], rows[i]["bytes"], i))


class _TorchSession:
    """A PyTorch classifier behind onnxruntime's ``run(None, feed)``, so one scoring function serves every form."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.no_grad()
    def run(self, _names, feed: dict) -> list[np.ndarray]:
        out = self.model(input_ids=torch.from_numpy(feed["input_ids"]), attention_mask=torch.from_numpy(feed["attention_mask"]))
        return [out.logits.float().numpy()]


def _session(run: str):
    if run.endswith(".onnx"):
        import onnxruntime

        return onnxruntime.InferenceSession(run, providers=["CPUExecutionProvider"])
    return _TorchSession(from_pretrained(run).model)


def check_inputs(model: str, task: str, data_dir: str | None, out, *, max_drop: float, batch_sizes, seq_len: int,
                 repeats: int, threads: int | None, overwrite: bool):
    """Check every input before anything is built or written; returns the task, the resolved model path, its config,
    its tokenizer and the dev examples."""
    from ..data.glue import get_task
    from ..targets import max_positions
    from .onnx import _requirements
    from .quantize import dev_examples
    from ..io import pyplot

    task_info = get_task(task)
    if not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise InputError(f"--max-drop {max_drop!r} must be a number of dev-score points >= 0, e.g. 1.0")
    _check(batch_sizes, seq_len, "cpu", threads, repeats, None)
    if data_dir is None:
        raise InputError("--data-dir is required: the GLUE directory (download_glue_data.py layout) whose dev set scores each form")
    if not Path(data_dir).is_dir():
        raise MissingInputError(f"--data-dir {data_dir} is not a directory; pass the GLUE data directory")
    path = Path(resolve_model_path(model))
    if not path.is_dir():
        raise MissingInputError(f"{model} is not a model directory; ship reads a fine-tuned classifier saved on disk "
                                "(e.g. prunelab finetune --save-model writes OUT/model)")
    check_output_dir(out, overwrite, inputs=[path, data_dir])
    _requirements()
    pyplot("ship's figure")  # the figure is drawn last: its dependency is checked first
    config = load_config(str(path))[1]
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForSequenceClassification")]
    if not heads:
        raise InputError(f"{model} is not a sequence classifier (its config names {getattr(config, 'architectures', None)}); "
                         f"fine-tune it first: prunelab finetune {model} --task {task} --save-model ...")
    if config.num_labels != task_info.num_labels:
        raise InputError(f"{model} has {config.num_labels} labels, {task_info.name} needs {task_info.num_labels}; pass "
                         "the model fine-tuned on this task, or the task it was fine-tuned on")
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise InputError(f"--seq-len {seq_len} exceeds what {model} takes ({limit} positions); lower --seq-len")
    tokenizer = load_tokenizer(str(path))
    if tokenizer is None:
        raise InputError(f"{model} has no tokenizer files; ship scores each form on the dev set with them: save the "
                         "tokenizer beside the model")
    return task_info, path, tokenizer, dev_examples(task_info.name, data_dir)


def ship(model: str, task: str, data_dir: str | None, out: str | os.PathLike, *, max_drop: float = MAX_DROP,
         batch_sizes=(1, 8), seq_len: int = 128, repeats: int = 20, threads: int | None = None, overwrite: bool = False,
         progress: bool = True, timer: Callable[..., dict] = measure_speed) -> dict:
    """Measure every form of `model` that applies (``FORMS``) and write the chosen one to `out`.

    Args:
        model: A fine-tuned sequence classifier's directory (pruned or not) with its tokenizer.
        task, data_dir: The GLUE task it was fine-tuned on and the directory holding its dev file.
        max_drop: Dev-score points (0-100 scale) a form may lose against the input and still be chosen.
        batch_sizes, seq_len, repeats, threads: The timing (``measure_speed``); the smallest batch size decides.
        timer: What times the forms (``measure_speed``'s signature and result).

    Returns:
        What ``ship.json`` holds: ``forms`` (one row each: ``form``, ``label``, ``kind``, ``bytes``, ``bytes_ratio``,
        ``latency_ms``, ``p10_ms``, ``p90_ms`` and ``latency_ratio`` by batch size, ``timed_as``, ``score``,
        ``drop``, ``qualifies``, ``chosen``, ``file``), ``skipped`` (form -> why), ``chosen``, ``noise_floor``
        (paired ratio of the input's identical copy, by batch size) and the settings.
    """
    from ..config import versions
    from .quantize import dev_score
    from .ship_report import figure, markdown

    batch_sizes = list(batch_sizes)
    task_info, path, tokenizer, dev = check_inputs(model, task, data_dir, out, max_drop=max_drop, batch_sizes=batch_sizes,
                                                   seq_len=seq_len, repeats=repeats, threads=threads, overwrite=overwrite)
    pruned = (path / MASKS_FILE).is_file() or is_compressed(path)
    with tempfile.TemporaryDirectory(prefix="prunelab-ship-") as scratch:
        ctx = Context(model, path, pruned, tokenizer, Path(scratch), {}, task_info.name, data_dir)
        skipped = {}
        bar = _progress(len(FORMS) * 2 + 1, progress)
        for form in FORMS:
            bar.set_description(f"ship: building {form.name}")
            why = form.why_not(ctx)
            if why is None:
                try:
                    ctx.built[form.name] = form.build(ctx)
                except InputError as err:  # e.g. an architecture no ONNX exporter traces: the other forms still ship
                    if form is FORMS[0]:
                        raise
                    why = f"could not be made: {err}"
            if why is not None:
                skipped[form.name] = why
                logger.info("ship: %s skipped: %s", form.name, why)
            bar.update(1)
        scores = {}
        for name, built in ctx.built.items():
            bar.set_description(f"ship: scoring {name} on {task_info.name} dev")
            scores[name] = dev_score(_session(built.run), str(path), task_info.name, data_dir, examples=dev,
                                     tokenizer=built.tokenizer or tokenizer)
            bar.update(1)
        bar.update(len(FORMS) - len(ctx.built))
        timed = [b.run for b in ctx.built.values() if b.timed_as is None]
        bar.set_description(f"ship: timing {len(timed)} forms interleaved")
        speed = timer(timed, batch_sizes=batch_sizes, seq_len=seq_len, device="cpu", threads=threads, repeats=repeats,
                      sparse_execution="auto" if pruned else None)
        bar.update(1)
        bar.close()
        rows = _rows(ctx, scores, speed, batch_sizes)
        batch = min(batch_sizes)
        chosen = choose(rows, max_drop, batch)
        for i, row in enumerate(rows):
            row["qualifies"] = i == 0 or row["drop"] <= max_drop
            row["chosen"] = i == chosen
        result = {"model": model, "task": task_info.name, "data_dir": str(data_dir), "dev_examples": len(dev),
                  "max_drop": max_drop, "batch_sizes": batch_sizes, "choice_batch": batch, "seq_len": seq_len,
                  "repeats": repeats, "threads": speed["threads"], "sparse_execution": speed.get("sparse_execution"),
                  "forms": rows, "skipped": skipped, "chosen": rows[chosen]["form"],
                  "noise_floor": {str(r["batch"]): r["paired_ratio"] for r in speed["rows"] if r["model"] == NOISE_FLOOR},
                  "versions": versions()}
        with atomic_directory(out) as tmp:
            built = ctx.built[rows[chosen]["form"]]
            if built.ship.is_dir():  # a model directory: its files (not its subfolders, nor a marker)
                (tmp / built.name).mkdir()
                for f in built.ship.iterdir():
                    if f.is_file() and not f.name.startswith("."):
                        shutil.copy2(f, tmp / built.name / f.name)
            else:
                shutil.copyfile(built.ship, tmp / built.name)
                (built.tokenizer or tokenizer).save_pretrained(tmp / "tokenizer")  # an ONNX graph takes token ids
            write_json(tmp / "ship.json", result)
            write_text(tmp / "ship.md", markdown(result))
            figure(result, tmp / "ship.png")
    return result


def _rows(ctx: Context, scores: dict, speed: dict, batch_sizes: list[int]) -> list[dict]:
    """One row per built form: bytes, latency per batch size (from the form it is timed as), score and drop."""
    by_run = {(r["model"], r["batch"]): r for r in speed["rows"]}
    sizes = speed.get("sizes", {})
    rows, first = [], None
    for form in FORMS:
        built = ctx.built.get(form.name)
        if built is None:
            continue
        timed = ctx.built[built.timed_as].run if built.timed_as else built.run
        size = model_bytes(built.run) or 0
        kind = describe(built.run, None) if built.run.endswith(".onnx") else sizes.get(timed, {}).get("kind", "pytorch")
        if form.name == "compressed":
            kind = f"{kind.split(' (')[0]} (compressed artifact: {COMPRESSED_FILE})"
        row = {"form": form.name, "label": form.label, "kind": kind, "bytes": size, "timed_as": built.timed_as,
               "score": scores[form.name], "file": built.name,
               "latency_ms": {str(b): by_run[timed, b]["median_ms"] for b in batch_sizes},
               "p10_ms": {str(b): by_run[timed, b]["p10_ms"] for b in batch_sizes},
               "p90_ms": {str(b): by_run[timed, b]["p90_ms"] for b in batch_sizes}}
        first = first or row
        row["drop"] = first["score"] - row["score"]
        row["bytes_ratio"] = size / first["bytes"] if first["bytes"] else None
        row["latency_ratio"] = {b: ms / first["latency_ms"][b] for b, ms in row["latency_ms"].items()}
        rows.append(row)
    return rows


class _NoBar:
    def set_description(self, _text):
        pass

    def update(self, _n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety
        return _NoBar()
    return tqdm(total=total, unit="step", leave=False)
