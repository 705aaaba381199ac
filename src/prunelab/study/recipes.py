"""The recipes of study runs (what a run does: pre-train, fine-tune, ...): for each, its name in ``prunelab study
plan`` and the function that does it.

The runner calls a recipe's function with the run's clean ``work/`` directory: ``(spec, data_dir, root, run, work)
-> dict``, returning what result.json holds besides the run's id, recipe and params. A model that dependents start
from is saved to ``work/model`` and named by the result's ``"model"``. A new recipe is one function here and one
line in ``RECIPES``; the plan starts runs in the order of ``RECIPES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from ..io import read_json
from .spec import StudySpec
from .study_dir import RESULT_FILE, run_dir
from ..errors import InputError


@dataclass(frozen=True)
class Run:
    """One unit of work. `params` hold everything the executor needs besides the spec."""

    id: str
    recipe: str  # a key of RECIPES
    params: dict = field(hash=False, compare=False)
    depends_on: tuple[str, ...] = ()


def _result_of(root: Path, run_id: str) -> dict:
    return read_json(run_dir(root, run_id) / RESULT_FILE, "result file")


def run_pretrain(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """Continued MLM pre-training, pruned on a cubic schedule to the run's sparsity (0: dense). With ``[pretrain]
    steps = 0`` (only for regimes that start from the dense model) the dense run is the spec's model as it is."""
    from ..pipelines.pretrain import PretrainConfig, pretrain

    p = spec.pretrain
    if p.steps == 0:
        from ..artifact import resolve_model_path

        model = resolve_model_path(spec.model)
        deployment = measure_deployment(spec, Path(model), work, data_dir) if Path(model).is_dir() else None
        return {"model": model, "dev_loss_before": None, "dev_loss_after": None, "realized_sparsity": 0.0, "seconds": 0.0,
                "deployment": deployment}
    text = (dict(corpus=[str(data_dir / c) for c in spec.data.corpus], dev_file=[str(data_dir / c) for c in spec.data.dev_corpus])
            if data_dir else dict(corpus=[], dataset=spec.data.hub_corpus))  # no data directory: the hub
    cfg = PretrainConfig(
        model=spec.model, **text,
        out=str(work), sparsity=run.params["sparsity"], criterion=run.params["criterion"], scope=spec.scope,
        steps=p.steps, prune_end=min(p.prune_end or p.steps, p.steps), prune_every=p.prune_every, batch_size=p.batch_size,
        max_seq_len=p.max_seq_len, lr=p.lr, head_warmup_steps=p.head_warmup_steps, max_train_lines=p.max_train_lines,
        max_dev_blocks=p.max_dev_blocks, save_steps=max(p.steps, 1), logging_steps=max(1, p.steps // 10), progress=False,
    )
    m = pretrain(cfg, overwrite=True)
    return {"model": str(work / "model"), "dev_loss_before": m["dev_loss_before"], "dev_loss_after": m["dev_loss_after"],
            "realized_sparsity": m["sparsity"], "seconds": m["seconds"],
            "deployment": measure_deployment(spec, work / "model", work, data_dir)}


def measure_deployment(spec: StudySpec, model_dir: Path, work: Path, data_dir: Path | None = None) -> dict | None:
    """The model's bytes as a compressed artifact (lossless, zstd) and the CPU forward latency of its encoder (the
    MLM head, which a deployed classifier does not carry, left out) with the best execution ``sparse_execution``
    finds, beside an identical copy (``[deployment]``; ``None`` when it is off). With ``int8``, under ``"int8"``
    the same of its encoder as an INT8 ONNX file (``deploy.quantize``), timed in the same rounds: its bytes,
    latency, paired ratio to the FP32 encoder, the quantization settings and its output's largest difference to the
    FP32 graph's. With ``vocab``, under ``"vocab"`` the same of the model with its vocabulary cut to the text of the
    tasks' training splits (from `data_dir`, else the hub): its bytes as a compressed artifact, its latency and
    paired ratio, and the vocabulary sizes."""
    import shutil

    from ..artifact import COMPRESSED_FILE, load_config
    from ..deploy.compressed import compress
    from ..deploy.speed import NOISE_FLOOR, measure_speed
    from ..targets import max_positions

    d = spec.deployment
    if not d.measure:
        return None
    compressed = work / "compressed"
    compress(str(model_dir), compressed, overwrite=True)
    size = (compressed / COMPRESSED_FILE).stat().st_size
    shutil.rmtree(compressed)
    from transformers import AutoModel

    onnx_dir = work / "int8"
    shutil.rmtree(onnx_dir, ignore_errors=True)
    quantized = _int8_encoder(model_dir, onnx_dir) if d.int8 else None
    cut_dir = work / "vocab"
    shutil.rmtree(cut_dir, ignore_errors=True)
    cut = _vocab_cut(spec, model_dir, cut_dir, data_dir) if d.vocab else None
    seq_len = min(d.seq_len, max_positions(load_config(str(model_dir))[1]) or d.seq_len)  # what the model takes
    models = [str(model_dir)] + ([quantized["file"]] if quantized else []) + ([str(cut_dir / "model")] if cut else [])
    timed = measure_speed(models, batch_sizes=[d.batch_size], seq_len=seq_len, device="cpu",
                          repeats=d.repeats, warmup=1, sparse_execution="auto", model_class=AutoModel)
    row, noise = (next(r for r in timed["rows"] if r["model"] == name) for name in (str(model_dir), NOISE_FLOOR))
    report = timed["execution"][str(model_dir)]
    out = {"compressed_bytes": size, "latency_ms": row["median_ms"], "p10_ms": row["p10_ms"], "p90_ms": row["p90_ms"],
           "noise_floor_ratio": noise["paired_ratio"], "sparse_layers": sum(r["choice"] != "dense" for r in report),
           "target_layers": len(report), "batch": [d.batch_size, seq_len], "threads": timed["threads"]}
    if quantized:
        int8 = next(r for r in timed["rows"] if r["model"] == quantized["file"])
        out["int8"] = {"onnx_bytes": quantized["bytes"], "latency_ms": int8["median_ms"], "p10_ms": int8["p10_ms"],
                       "p90_ms": int8["p90_ms"], "paired_ratio": int8["paired_ratio"], "fp32_onnx_bytes": quantized["fp32_bytes"],
                       "weight_type": quantized["settings"]["weight_type"], "max_abs_diff": quantized["max_abs_diff"],
                       "output_scale": quantized["output_scale"]}
        shutil.rmtree(onnx_dir)
    if cut:
        timed_cut = next(r for r in timed["rows"] if r["model"] == str(cut_dir / "model"))
        out["vocab"] = {**cut, "latency_ms": timed_cut["median_ms"], "p10_ms": timed_cut["p10_ms"],
                        "p90_ms": timed_cut["p90_ms"], "paired_ratio": timed_cut["paired_ratio"]}
        shutil.rmtree(cut_dir)
    return out


def _vocab_cut(spec: StudySpec, model_dir: Path, folder: Path, data_dir: Path | None) -> dict:
    """`model_dir` with its vocabulary cut to the text of the study's tasks' training splits, in ``folder/model``:
    its bytes as a compressed artifact and the vocabulary sizes."""
    from ..artifact import COMPRESSED_FILE
    from ..data.glue import get_task, read_hub_split, read_split
    from ..deploy.compressed import compress
    from ..deploy.vocab import prune_vocab

    glue = None if spec.data.glue == "hub" or data_dir is None else data_dir / spec.data.glue
    folder.mkdir(parents=True)
    corpus = folder / "tasks.txt"  # one text a line: every sentence of every task's training split
    with corpus.open("w", encoding="utf-8") as f:
        for name in spec.finetune.tasks:
            task = get_task(name)
            for a, b, _ in (read_split(glue, task, "train") if glue else read_hub_split(task, "train")):
                f.write(" ".join(a.split()) + "\n" + ("" if b is None else " ".join(b.split()) + "\n"))
    report = prune_vocab(str(model_dir), folder / "model", corpus=[str(corpus)])
    compress(str(folder / "model"), folder / "compressed")
    return {"compressed_bytes": (folder / "compressed" / COMPRESSED_FILE).stat().st_size,
            "vocab_before": report["vocab_before"], "vocab_after": report["vocab_after"]}


def _int8_encoder(model_dir: Path, folder: Path) -> dict:
    """The encoder of `model_dir` (no head) exported to ONNX and quantized to INT8 in `folder`: ``quantize``'s info."""
    from transformers import AutoModel

    from ..deploy.onnx import export_onnx
    from ..deploy.quantize import quantize

    fp32 = export_onnx(str(model_dir), folder / "encoder.onnx", model_class=AutoModel)["file"]
    return quantize(fp32, folder / "encoder.int8.onnx")


def run_droplayers(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """Drop ``count`` layers by ``strategy`` from the model of the run it starts from (contribution scores and the forward
    timing batch come from the text sample packaged with prunelab)."""
    from ..pipelines.drop_layers import drop_and_save

    strategy, count = run.params["strategy"], run.params["count"]
    source = _result_of(root, run.params["start_run"])
    try:
        info = drop_and_save(source["model"], str(work / "model"), strategy=strategy, count=count)
    except ValueError as err:  # e.g. a count the model cannot spare: say which setting to change
        where = f" in {spec.source}" if spec.source else ""
        raise InputError(f"cannot drop {count} layers of {spec.model!r} by {strategy}: {err}; "
                         f"change [layer_drop] counts or strategies{where}") from None
    keep = ("dropped", "layers_before", "layers_after", "contribution_scores", "params_before", "params_after",
            "seconds_before", "seconds_after", "timing_batch")
    return {"model": str(work / "model"), **{k: info[k] for k in keep},
            "deployment": measure_deployment(spec, work / "model", work, data_dir)}


def run_structured(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """Remove the run's fractions of attention heads and FFN neurons from the model of the run it starts from."""
    from ..pipelines.prune_structured import prune_structured

    p = run.params
    info = prune_structured(_result_of(root, p["start_run"])["model"], str(work / "model"), heads=p["heads"], ffn=p["ffn"],
                            criterion=p["criterion"], scope=p["scope"])
    keep = ("heads_before", "heads_after", "ffn_before", "ffn_after", "encoder_params_before", "encoder_params_after",
            "params_before", "params_after")
    return {"model": str(work / "model"), **{k: info[k] for k in keep},
            "deployment": measure_deployment(spec, work / "model", work, data_dir)}


def _finetune_options(spec: StudySpec, run: Run) -> dict:
    """FinetuneConfig settings that depend on the regime (the rest fine-tunes every model alike)."""
    f, regime = spec.finetune, run.params["regime"]
    if regime == "information_deletion":
        return {"masks": "free"}
    if regime == "pruned_after_finetuning":
        return {"epochs": f.epochs_after_pruning, "prune_after_epochs": f.prune_after_epochs, "sparsity": run.params["sparsity"],
                "criterion": run.params["criterion"], "scope": spec.scope}
    if regime == "oneshot_finetuned":  # a one-shot pruned fine-tuned model, fine-tuned on with its masks held
        return {"epochs": f.epochs_after_pruning}
    return {}  # masks held: a pruned model keeps its zeros; a dense or layer-dropped one (no masks file) is dense


def run_finetune(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """GLUE fine-tuning of the model of the run it starts from at one learning rate and seed."""
    from ..pipelines.finetune import FinetuneConfig, finetune

    options = {"masks": "held", "epochs": spec.finetune.epochs, **_finetune_options(spec, run)}
    cfg = FinetuneConfig(**_glue_run(spec, data_dir, root, run, work), lrs=[run.params["lr"]], **options)
    m = finetune(cfg, overwrite=True)
    return {"dev": m["dev"], "dev_score": m["dev_score"], "train_loss_full": m["train_loss_full"],
            "realized_sparsity": m["sparsity"], "seconds": m["seconds"], "dev_examples": m["dev_examples"]}


def _glue_run(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """The GlueOptions every GLUE run of a study shares: the model of the run it starts from, the task, data, seed and sizes."""
    f = spec.finetune
    glue = None if spec.data.glue == "hub" or data_dir is None else str(data_dir / spec.data.glue)
    return dict(model=_result_of(root, run.params["start_run"])["model"], task=run.params["task"], out=str(work),
                data_dir=glue, seed=run.params["seed"], batch_size=f.batch_size, max_seq_len=f.max_seq_len,
                max_train_samples=f.max_train_samples, logging_steps=10_000, progress=False)


def run_teacher(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """The distill regime's teacher: the dense pre-trained model fine-tuned on the task over the learning-rate
    grid; the best learning rate's model is saved."""
    from ..pipelines.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(**_glue_run(spec, data_dir, root, run, work), lrs=spec.finetune.lrs, epochs=spec.finetune.epochs,
                         save_model=True)
    m = finetune(cfg, overwrite=True)
    return {"model": str(work / "model"), "best_lr": m["best_lr"], "dev": m["dev"], "dev_score": m["dev_score"],
            "train_loss_full": m["train_loss_full"], "seconds": m["seconds"]}


def run_oneshot(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """The task's teacher (the dense model fine-tuned on it) pruned one-shot by the run's criterion to its sparsity
    (``[oneshot]``: Wanda and SparseGPT calibrate on the task's training examples), saved to ``work/model`` and
    scored on the dev set as it is."""
    import time

    from ..config import CALIBRATED, PruningConfig, one_shot_scope
    from ..data.calibration import Calibration
    from ..oneshot import prune
    from ..pipelines.grid import GlueOptions, evaluate_saved

    p, o, started = run.params, spec.oneshot, time.time()
    glue = _glue_run(spec, data_dir, root, run, work)
    calibration = (Calibration(task=p["task"], data_dir=glue["data_dir"], samples=o.calibration_samples,
                               max_seq_len=spec.finetune.max_seq_len, seed=p["seed"])
                   if p["criterion"] in CALIBRATED else None)
    config = PruningConfig(sparsity=p["sparsity"], criterion=p["criterion"], scope=one_shot_scope(p["criterion"]),
                           exclude=o.exclude, seed=p["seed"])
    info = prune(glue["model"], config, work / "model", overwrite=True, calibration=calibration)
    m = evaluate_saved(GlueOptions(**{**glue, "model": str(work / "model")}))
    return {"model": str(work / "model"), "dev": m["dev"], "dev_score": m["dev_score"], "train_loss_full": m["train_loss_full"],
            "realized_sparsity": info["report"]["overall"]["sparsity"], "scope": config.scope, "fallback": info.get("fallback"),
            "dev_examples": m["dev_examples"], "seconds": time.time() - started}


def run_adapt(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """Masks learned over the frozen dense pre-trained model, to the run's sparsity, at one score learning rate."""
    from ..pipelines.adapt_by_pruning import AdaptConfig, adapt

    a = spec.adapt
    cfg = AdaptConfig(**_glue_run(spec, data_dir, root, run, work), sparsity=run.params["sparsity"], lrs=[run.params["lr"]],
                      head_lr=a.head_lr, penalty=a.penalty, ramp=a.ramp, band=a.band, exact=a.exact,
                      epochs=a.epochs or spec.finetune.epochs)
    m = adapt(cfg, overwrite=True)
    return {"dev": m["dev"], "dev_score": m["dev_score"], "train_loss_full": m["train_loss_full"],
            "realized_sparsity": m["sparsity"], "seconds": m["seconds"]}


def run_prune_while_finetuning(spec: StudySpec, data_dir: Path | None, root: Path, run: Run, work: Path) -> dict:
    """The dense pre-trained model pruned (cubic) to the run's sparsity while fine-tuning: taught by the task's
    teacher run (distill), or on the task loss alone (pruned_during_finetuning)."""
    from ..pipelines.distill_prune import DistillConfig, distill_prune

    teacher_model = _result_of(root, run.params["teacher"])["model"] if run.params.get("teacher") else None
    cfg = DistillConfig(**_glue_run(spec, data_dir, root, run, work), **dataclasses.asdict(spec.distill), teacher=teacher_model,
                        sparsity=run.params["sparsity"], lrs=[run.params["lr"]], epochs=spec.finetune.epochs,
                        criterion=run.params.get("criterion", spec.criterion), scope=spec.scope)
    m = distill_prune(cfg, overwrite=True)
    return {"dev": m["dev"], "dev_score": m["dev_score"], "train_loss_full": m["train_loss_full"],
            "realized_sparsity": m["sparsity"], "seconds": m["seconds"], "seconds_per_step": m["seconds_per_step"],
            "teacher_share": m["teacher_share"], "peak_memory_mb": m["peak_memory_mb"]}


@dataclass(frozen=True)
class Recipe:
    """A recipe of study runs: what ``prunelab study plan`` calls it, and the function that does one run."""

    label: str
    run: Callable[[StudySpec, Path | None, Path, Run, Path], dict]


# recipe -> Recipe, in the order runs are listed and started; looked up when a run starts (tests replace entries)
RECIPES: dict[str, Recipe] = {
    "pretrain": Recipe("pre-training", run_pretrain),
    "droplayers": Recipe("layer dropping", run_droplayers),
    "structured": Recipe("structured pruning", run_structured),
    "finetune": Recipe("fine-tuning", run_finetune),
    "teacher": Recipe("teacher", run_teacher),
    "oneshot": Recipe("one-shot pruning", run_oneshot),
    "adapt": Recipe("mask learning", run_adapt),
    "prune_while_finetuning": Recipe("pruning while fine-tuning", run_prune_while_finetuning),
}
