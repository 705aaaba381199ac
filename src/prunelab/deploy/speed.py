"""Forward latency and throughput of models, measured honestly: interleaved in one process, warmed up, medians and
spread, and an identical copy of the first model timed alongside as the noise floor.

``measure_speed(models, ...)`` loads each model prunelab reads (dense, pruned, compressed, structurally pruned,
layer-dropped; an ``.onnx`` file runs in onnxruntime), and for each batch size times one forward pass of each model
per round, in a new random order every round (so drift and order effects hit all alike), after warm-up rounds. On
CUDA the timing synchronises, ``autocast`` can run it in fp16/bf16, and the peak memory of each model is recorded.
``sparse_execution`` (``"auto"``) first gives every PyTorch model the sparse kernels that measure faster
(``prunelab.deploy.execution``); the noise-floor copy is made after, so it runs the first model's very choices.
"""

from __future__ import annotations

import contextlib
import copy
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ..errors import InputError, MissingInputError
from ..targets import max_positions

NOISE_FLOOR = "(identical copy of the first: noise floor)"
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _check(batch_sizes, seq_len, device, threads, repeats, autocast) -> None:
    from ..config import check_number

    if not batch_sizes:
        raise InputError("--batch-sizes must list at least one batch size, e.g. 1,8,32")
    for b in batch_sizes:
        check_number("--batch-sizes entry", b, low=1, integer=True)
    check_number("--seq-len", seq_len, low=1, integer=True)
    check_number("--repeats", repeats, low=1, integer=True)
    if threads is not None:
        check_number("--threads", threads, low=1, integer=True)
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: allowed cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available to torch here; use --device cpu")
    if autocast is not None and (autocast not in AUTOCAST or device != "cuda"):
        raise InputError(f"--autocast {autocast!r}: allowed {', '.join(AUTOCAST)}, on --device cuda only")


class _Onnx:
    def __init__(self, path: str, threads: int):
        try:
            import onnxruntime
        except ImportError:
            raise InputError(f"{path}: timing an ONNX file needs onnxruntime: pip install 'prunelab[onnx]'") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would busy-wait
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a bad file
            raise InputError(f"{path} is not an ONNX model onnxruntime can run: {str(err).splitlines()[0]}") from None

    def __call__(self, ids, mask):
        return self.session.run(None, {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()})


def load_for_timing(model: str, device: str, threads: int, model_class=None):
    """A callable ``(input_ids, attention_mask)`` running `model` (as `model_class`, by default the class its config
    names), and its vocabulary size (``None`` for ONNX)."""
    if str(model).endswith(".onnx"):
        if not Path(model).is_file():
            raise MissingInputError(f"{model} does not exist")
        return _Onnx(str(model), threads), None
    from ..artifact import from_pretrained

    net = from_pretrained(model, model_class=model_class).model.eval().to(device)
    return net, int(net.config.vocab_size)


def model_bytes(model: str) -> int | None:
    """Bytes on disk of what `model` runs from: an ``.onnx`` file's size; for a model directory its weights file (the
    compressed checkpoint of a compressed artifact, else ``model.safetensors``, or the sum of its shards); ``None``
    for a hub id."""
    from ..artifact import COMPRESSED_FILE, DENSE_FILE, resolve_model_path

    path = Path(resolve_model_path(str(model)))
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    for name in (COMPRESSED_FILE, DENSE_FILE):
        if (path / name).is_file():
            return (path / name).stat().st_size
    shards = [f for f in path.glob("model-*.safetensors")] or [f for f in path.glob("pytorch_model*.bin")]
    return sum(f.stat().st_size for f in shards) or None


def describe(model: str, runner) -> str:
    """What `model` is, as loaded into `runner`: an ONNX file's precision read from its graph
    (``quantize.onnx_kind``), or a PyTorch model's dtype, the sparsity its ``prunelab.json`` records, and how it is
    stored (a compressed artifact, or with a masks file)."""
    from ..artifact import INFO_FILE, is_compressed, resolve_model_path
    from ..io import read_json
    from ..masks_io import MASKS_FILE

    if not isinstance(runner, torch.nn.Module):
        try:
            from .quantize import onnx_kind

            return onnx_kind(model)
        except ImportError:  # onnxruntime without the onnx package: it runs, but its graph is not read
            return "onnx"
    dtype = str(next(runner.parameters()).dtype).removeprefix("torch.").replace("float", "fp")
    path = Path(resolve_model_path(str(model)))
    info = read_json(path / INFO_FILE, "artifact info") if (path / INFO_FILE).is_file() else {}
    sparsity = info.get("report", {}).get("overall", {}).get("sparsity")  # of the prunable weights, as saved
    pruned = "" if sparsity is None else f", {sparsity:.1%} sparse"
    stored = ("compressed artifact" if is_compressed(path) else "masks file" if (path / MASKS_FILE).is_file() else "")
    return f"pytorch {dtype}" + pruned + (f" ({stored})" if stored else "")


def measure_speed(models: list[str], *, batch_sizes=(1, 8, 32), seq_len: int = 128, device: str = "cpu",
            threads: int | None = None, repeats: int = 20, warmup: int = 3, sparse_execution: str | None = None,
            autocast: str | None = None, seed: int = 0, model_class=None) -> dict:
    """Time a forward pass of each of `models` at each batch size (sequences of `seq_len` tokens, full mask);
    `model_class` (e.g. ``transformers.AutoModel``: the encoder without its head) overrides the class each loads as.

    Returns:
        ``{"device", "threads", "seq_len", "repeats", "models", "sizes", "execution", "rows"}``; ``sizes`` gives each
        model's ``bytes`` (``model_bytes``) and ``kind`` (``describe``); one row per model (the
        noise-floor copy after the first) and batch size: ``median_ms``, ``p10_ms``, ``p90_ms``, ``throughput``
        (sequences per second), ``ratio`` (median over the first model's), ``paired_ratio`` (median of the
        per-round ratios to the first model), and on CUDA ``max_memory_mb``.
    """
    if not models:
        raise InputError("give at least one MODEL to time")
    _check(batch_sizes, seq_len, device, threads, repeats, autocast)
    previous = torch.get_num_threads()  # the caller's, given back: a library call leaves the process as it found it
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(models, batch_sizes, seq_len, device, torch.get_num_threads(), repeats, warmup, sparse_execution,
                        autocast, seed, model_class)
    finally:
        torch.set_num_threads(previous)


def _measure(models, batch_sizes, seq_len, device, threads, repeats, warmup, sparse_execution, autocast, seed,
             model_class) -> dict:
    loaded = {m: load_for_timing(m, device, threads, model_class) for m in models}
    runners = {m: r for m, (r, _) in loaded.items()}
    sizes = {m: {"bytes": model_bytes(m), "kind": describe(m, r)} for m, r in runners.items()}
    for name, runner in runners.items():
        limit = max_positions(runner.config) if isinstance(runner, torch.nn.Module) else None
        if limit is not None and seq_len > limit:
            raise InputError(f"--seq-len {seq_len} exceeds what {name!r} takes ({limit} positions); lower --seq-len")
    first = models[0]
    vocab = min([v for _, v in loaded.values() if v] or [100])
    rng = torch.Generator().manual_seed(seed)
    execution = {}
    if sparse_execution:
        from .execution import sparse_execution as apply

        example = _inputs(max(batch_sizes), seq_len, vocab, rng, device)  # kernels chosen at the largest batch
        for name, runner in runners.items():
            if isinstance(runner, torch.nn.Module):
                apply(runner, {"input_ids": example[0], "attention_mask": example[1]}, mode=sparse_execution)
                execution[name] = runner.prunelab_execution
    # the noise floor: the first model as it will be timed, its execution choices included
    runners[NOISE_FLOOR] = copy.deepcopy(runners[first]) if isinstance(runners[first], torch.nn.Module) else \
        load_for_timing(first, device, threads, model_class)[0]
    rows = []
    order = random.Random(seed)
    for batch in batch_sizes:
        ids, mask = _inputs(batch, seq_len, vocab, rng, device)
        times: dict[str, list[float]] = {name: [] for name in runners}
        memory: dict[str, float] = {}
        for r in range(warmup + repeats):
            for name in order.sample(list(runners), len(runners)):
                seconds, peak = _time_once(runners[name], ids, mask, device, autocast)
                if r >= warmup:
                    times[name].append(seconds)
                    memory[name] = max(memory.get(name, 0.0), peak)
        base = np.array(times[first])
        for name, t in times.items():
            arr = np.array(t)
            row = {"model": name, "batch": batch, "median_ms": float(np.median(arr)) * 1e3,
                   "p10_ms": float(np.percentile(arr, 10)) * 1e3, "p90_ms": float(np.percentile(arr, 90)) * 1e3,
                   "throughput": batch / float(np.median(arr)), "ratio": float(np.median(arr) / np.median(base)),
                   "paired_ratio": float(statistics.median(arr / base))}
            if device == "cuda":
                row["max_memory_mb"] = memory.get(name, 0.0) / 2**20
            rows.append(row)
    return {"device": device, "threads": threads, "seq_len": seq_len, "repeats": repeats, "warmup": warmup,
            "autocast": autocast, "sparse_execution": sparse_execution, "models": models, "sizes": sizes, "execution": execution,
            "rows": rows}


def _inputs(batch: int, seq_len: int, vocab: int, rng: torch.Generator, device: str):
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=rng).to(device)
    return ids, torch.ones_like(ids)


@torch.no_grad()
def _time_once(runner, ids, mask, device: str, autocast: str | None) -> tuple[float, float]:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    context = torch.autocast("cuda", dtype=AUTOCAST[autocast]) if autocast else contextlib.nullcontext()
    start = time.perf_counter()
    with context:
        if isinstance(runner, torch.nn.Module):
            runner(input_ids=ids, attention_mask=mask)
        else:
            runner(ids, mask)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, float(torch.cuda.max_memory_allocated()) if cuda else 0.0


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def table(result: dict) -> str:
    """The measurement as a text table, one line per model and batch size."""
    lines = [f"device {result['device']}, {result['threads']} threads, sequence length {result['seq_len']}, "
             f"median of {result['repeats']} interleaved repeats after {result['warmup']} warm-up rounds"
             + (f", sparse execution {result['sparse_execution']}" if result["sparse_execution"] else "")
             + (f", autocast {result['autocast']}" if result["autocast"] else ""),
             *([f"{'model':<48} {'bytes':>13}  what it is"] if result.get("sizes") else []),  # older JSON: no sizes
             *(f"{name[-48:]:<48} {_size(info['bytes']):>13}  {info['kind']}" for name, info in result.get("sizes", {}).items()),
             f"{'model':<48} {'batch':>5} {'median ms':>10} {'p10-p90 ms':>17} {'seq/s':>8} {'vs first':>9}"]
    for row in result["rows"]:
        spread = f"{row['p10_ms']:.1f}-{row['p90_ms']:.1f}"
        memory = f" {row['max_memory_mb']:.0f} MB" if "max_memory_mb" in row else ""
        lines.append(f"{row['model'][-48:]:<48} {row['batch']:>5} {row['median_ms']:>10.1f} {spread:>17} "
                     f"{row['throughput']:>8.1f} {row['ratio']:>8.3f}x{memory}")
    for name, report in result["execution"].items():
        if name == NOISE_FLOOR:
            continue
        chosen = [r for r in report if r["choice"] != "dense"]
        lines.append(f"sparse execution of {name}: {len(chosen)} of {len(report)} target linear layers sparse"
                     + (f" ({', '.join(sorted({r['choice'] for r in chosen}))})" if chosen else ": no sparse kernel measured faster"))
    return "\n".join(lines)
