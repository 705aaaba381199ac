"""The results of a study, read from its runs' result.json files into the report's rows and cells."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.glue import get_task
from ..io import read_json
from .plan import (DENSE_START, ONESHOT, REGIMES, criteria_of, criterion_tag, droplayers_id, expand, finetune_id,
                   learning_rates, oneshot_id, pretrain_id, structured_id, teacher_id, variant)
from .spec import CRITERION_AXIS
from .runner import study_status
from .study_dir import RESULT_FILE, open_study, run_dir


def official_score(result: dict) -> float | None:
    """The run's GLUE score: the mean of its task's official metrics (averaged over MNLI's two dev splits)."""
    return result["dev_score"]


def paper_metric(result: dict) -> float | None:
    """The metric Compressing BERT (Gordon et al. 2020) reports: dev accuracy for a classification task (MNLI:
    the matched split only), Pearson correlation for the regression task STS-B; ``None`` when the run did not
    record it (a CoLA run from before accuracy was recorded for every task)."""
    task = get_task(result["task"])
    metrics = result.get("dev", {}).get(task.dev_splits[0], {})  # "dev", or MNLI's "dev_matched"
    value = metrics.get("pearson" if task.is_regression else "accuracy")
    return None if value is None else float(value)


@dataclass(frozen=True)
class Metric:
    """What a cell measures: `of` reads it (0-1) from a result dict; `name` is how figure titles call it."""

    key: str
    name: str
    of: Callable[[dict], float | None]


OFFICIAL = Metric("official", "GLUE dev score", official_score)
PAPER = Metric("paper", "dev accuracy (as in the paper)", paper_metric)


def collect(root: str | Path, metric: Metric = OFFICIAL) -> dict:
    """Read every finished run of the study in `root` into the table's cells.

    Cells: for each regime x sparsity x task, the best dev `metric` over learning rates (each learning rate's
    value averaged over seeds), scaled to 0-100 as GLUE reports it, with the loss over the whole training set
    of that run beside it. The pre-training loss is the MLM dev loss of the model the regime starts from. A
    cell whose runs have not finished (or lack the metric) is ``None``, so a partial study reports too.

    Returns:
        ``{"spec", "tasks", "regimes", "rows": [{"regime", "criterion", "sparsity", "pretrain_loss", "cells": {task:
        {"score", "train_loss", "lr"} | None}, "average": {...} | None}], "criteria": [...] | None, "layer_drop": [...]
        | None, "status", "metric"}``, where "regimes" are those varying sparsity (Table 1's: each with the spec's
        ``criterion``, where it takes it), "criteria" the same rows for every criterion of the criteria axis
        (``None`` unless the spec compares criteria: several, or a oneshot regime), "layer_drop" the layer-drop table's rows
        (see ``_layer_drop_rows``), ``None`` when the study has no layer_drop regime; "methods" sets the dense
        model, unstructured pruning, layer dropping and structured pruning side by side (``_method_rows``), with
        what each model's run measured for deployment.
    """
    root = Path(root)
    spec, _ = open_study(root)
    results = {}
    for run in expand(spec):
        path = run_dir(root, run.id) / RESULT_FILE
        if path.is_file():
            results[run.id] = read_json(path, "result file")
    tasks = [get_task(t).name for t in spec.finetune.tasks]
    def row(regime: str, criterion: str, sparsity: float) -> dict:
        pre = results.get(pretrain_id(0.0 if regime in DENSE_START else sparsity, criterion))
        cells = {task: _regime_cell(results, spec, regime, criterion, sparsity, task, metric) for task in tasks}
        return {"regime": regime, "criterion": criterion, "sparsity": sparsity,
                "pretrain_loss": pre["dev_loss_after"] if pre else None, "cells": cells, "average": _average(cells)}

    regimes = [r for r in spec.regimes if REGIMES[r].per_sparsity
               and (r not in CRITERION_AXIS or spec.criterion in criteria_of(spec, r, 1.0))]
    rows = [row(r, "random" if r == "random" else spec.criterion, s) for r in regimes for s in spec.sparsities]
    axis = [r for r in spec.regimes if r in CRITERION_AXIS]
    compared = len(spec.criteria) > 1 or any(r in ONESHOT for r in axis)
    criteria = [row(r, c, s) for r in axis for c in criteria_of(spec, r, 1.0) for s in spec.sparsities] if compared else None
    layer_drop = _layer_drop_rows(results, spec, tasks, metric) if "layer_drop" in spec.regimes else None
    methods = _method_rows(results, spec, tasks, metric, rows, criteria, layer_drop)
    dev_examples = {r["task"]: sum(r["dev_examples"].values()) for r in results.values() if r.get("dev_examples")}
    return {"spec": spec, "tasks": tasks, "regimes": regimes, "rows": rows, "criteria": criteria, "layer_drop": layer_drop,
            "methods": methods,
            "status": study_status(root), "metric": metric, "dev_examples": dev_examples}


def _average(cells: dict) -> dict | None:
    if not all(cells.values()):
        return None
    losses = [c["train_loss"] for c in cells.values()]
    return {"score": float(np.mean([c["score"] for c in cells.values()])),
            "train_loss": None if None in losses else float(np.mean(losses))}


def _regime_cell(results: dict, spec, regime: str, criterion: str, sparsity: float, task: str, metric: Metric) -> dict | None:
    """A regime's cell at `sparsity` for `criterion`: the best learning rate of its fine-tuning runs; the oneshot
    regimes' dense cell is the task's teacher (the dense model fine-tuned on it), and oneshot's own cells score the
    pruned teacher as it is (no learning rate: ``lr`` is ``None``)."""
    seeds = spec.finetune.seeds
    if regime in ONESHOT and sparsity == 0:
        return _seeds_cell([results.get(teacher_id(task, seed)) for seed in seeds], metric)
    if regime == "oneshot":
        return _seeds_cell([results.get(oneshot_id(criterion, sparsity, task, seed)) for seed in seeds], metric)
    tag = criterion_tag(spec, regime, criterion) if regime in CRITERION_AXIS else None
    return _best_cell(results, variant(regime, sparsity, criterion=tag), task, spec, metric)


def _seeds_cell(runs: list[dict | None], metric: Metric) -> dict | None:
    """The mean over seeds of runs that have no learning-rate grid of their own; ``None`` if any is missing."""
    if any(r is None for r in runs) or any(metric.of(r) is None for r in runs):
        return None
    losses = [r.get("train_loss_full") for r in runs]
    return {"score": float(np.mean([metric.of(r) for r in runs])) * 100,
            "train_loss": None if None in losses else float(np.mean(losses)), "lr": None}


def _layer_drop_rows(results: dict, spec, tasks: list[str], metric: Metric) -> list[dict]:
    """The dense row, then one per strategy x count: ``{"strategy", "count", "dropped", "layers",
    "layers_after", "params_kept", "time_ratio", "cells", "average"}``; measurements are ``None`` until
    the run that drops the layers has finished."""
    dropped = {(s, k): results.get(droplayers_id(s, k)) for s in spec.layer_drop.strategies for k in spec.layer_drop.counts}
    layers = next((r["layers_before"] for r in dropped.values() if r), None)
    dense_cells = {task: _best_cell(results, variant("dense", 0.0), task, spec, metric) for task in tasks}
    rows = [{"strategy": "dense", "count": 0, "dropped": [], "layers": layers, "layers_after": layers, "params_kept": 1.0,
             "time_ratio": 1.0, "cells": dense_cells, "average": _average(dense_cells)}]
    for (strategy, count), run in dropped.items():
        name = variant("layer_drop", strategy=strategy, count=count)
        cells = {task: _best_cell(results, name, task, spec, metric) for task in tasks}
        rows.append({
            "strategy": strategy, "count": count, "dropped": run["dropped"] if run else None, "layers": layers,
            "layers_after": run["layers_after"] if run else None,
            "params_kept": run["params_after"] / run["params_before"] if run else None,
            "time_ratio": run["seconds_after"] / run["seconds_before"] if run else None,
            "cells": cells, "average": _average(cells),
        })
    return rows


def encoder_weights(model_dir: str | Path) -> tuple[int, int]:
    """(nonzero, all) weights of the encoder layers in a saved model's ``model.safetensors``."""
    import re

    from safetensors import safe_open

    from ..targets import ARCHITECTURES

    model_dir = Path(model_dir)
    model_type = read_json(model_dir / "config.json", "model config").get("model_type")
    layers = re.compile(rf"(^|\.){re.escape(ARCHITECTURES[model_type].layer_stack)}\.\d+\.")
    nonzero = total = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if layers.search(key):
                tensor = f.get_tensor(key)
                nonzero, total = nonzero + int(tensor.count_nonzero()), total + tensor.numel()
    return nonzero, total


def _method_rows(results: dict, spec, tasks: list[str], metric: Metric, rows: list[dict], criteria: list[dict] | None,
                 layer_drop) -> list[dict]:
    """Every method whose fine-tuned model keeps the structure of the model it starts from, on one axis:
    ``{"method", "setting", "run", "kept", "deployment", "cells", "average"}``. `run` made that starting model;
    `kept` is its nonzero encoder-layer weights over the dense pre-trained model's (``None`` until it exists);
    `deployment` what that run measured of it (``[deployment]``), or ``None``. The methods: the dense model,
    unstructured pruning (the ``pruned`` and ``random`` regimes: zeros held while fine-tuning), layer dropping
    and structured pruning (smaller matrices)."""
    dense_run = pretrain_id(0.0, spec.criterion)

    def row(method: str, setting: str, run_id: str, cells: dict, average) -> dict:
        run, dense = results.get(run_id), results.get(dense_run)
        kept = None
        if run is not None and dense is not None and Path(run["model"], "model.safetensors").is_file():
            kept = encoder_weights(run["model"])[0] / encoder_weights(dense["model"])[1]
        return {"method": method, "setting": setting, "run": run_id, "kept": kept,
                "deployment": (run or {}).get("deployment"), "cells": cells, "average": average}

    dense_cells = {task: _best_cell(results, variant("dense", 0.0), task, spec, metric) for task in tasks}
    out = [row("dense", "", dense_run, dense_cells, _average(dense_cells))]
    others = [r for r in criteria or [] if r["regime"] == "pruned" and r["criterion"] != spec.criterion]
    for r in [r for r in rows if r["regime"] in ("pruned", "random")] + others:  # other criteria after the spec's
        if r["sparsity"] > 0:
            out.append(row("unstructured", f"{r['criterion']} {r['sparsity']:.0%}", pretrain_id(r["sparsity"], r["criterion"]),
                           r["cells"], r["average"]))
    for r in (layer_drop or [])[1:]:
        out.append(row("layer dropping", f"{r['strategy']} {r['count']}", droplayers_id(r["strategy"], r["count"]),
                       r["cells"], r["average"]))
    if "structured" in spec.regimes:
        st = spec.structured
        for heads, ffn in zip(st.heads, st.ffn):
            cells = {task: _best_cell(results, variant("structured", heads=heads, ffn=ffn), task, spec, metric)
                     for task in tasks}
            out.append(row("structured", f"{st.criterion} heads {heads:.0%} ffn {ffn:.0%}",
                           structured_id(st.criterion, heads, ffn), cells, _average(cells)))
    return out


def deployment_points(methods: list[dict]) -> list[dict]:
    """The deployment table's points: each of the `methods` rows (``form`` ``fp32``: its PyTorch encoder, its bytes
    as a compressed artifact), each followed, where its run measured one (``[deployment] int8``), by the same model
    as an INT8 ONNX file (``form`` ``int8``; its ``deployment`` is the INT8 measurement, with ``onnx_bytes``). An
    INT8 point carries the FP32 model's scores: a study does not score INT8, as it keeps no fine-tuned classifier. With
    ``[deployment] vocab`` the same follows for the model with its vocabulary cut (``form`` ``vocab``)."""
    points = []
    for row in methods:
        points.append({**row, "form": "fp32"})
        for form in ("int8", "vocab"):  # [deployment] int8, vocab: the same model as an INT8 file, vocabulary cut
            measured = (row["deployment"] or {}).get(form)
            if measured:
                points.append({**row, "form": form, "deployment": measured})
    return points


def pareto_front(rows: list[dict]) -> set[int]:
    """Indices of `rows` (with ``average`` and ``deployment``) that no other row beats: a higher or equal average
    score at a lower or equal latency, one of them strictly."""
    points = [(i, r["average"]["score"], r["deployment"]["latency_ms"]) for i, r in enumerate(rows)
              if r["average"] and r["deployment"]]
    return {i for i, score, ms in points
            if not any(s2 >= score and m2 <= ms and (s2 > score or m2 < ms) for _, s2, m2 in points)}


def _best_cell(results: dict, variant_name: str, task: str, spec, metric: Metric) -> dict | None:
    """The learning rate with the best `metric` averaged over seeds; ``None`` if any run is missing or lacks it."""
    by_lr = {}
    for lr in learning_rates(spec, variant_name.split("-")[0]):
        runs = [results.get(finetune_id(variant_name, task, lr, seed)) for seed in spec.finetune.seeds]
        if any(r is None for r in runs):
            return None  # a missing run makes the cell missing: the best of a partial grid is not the best
        values = [metric.of(r) for r in runs]
        if any(v is None for v in values):
            return None  # never a number from another metric
        by_lr[lr] = (float(np.mean(values)) * 100, float(np.mean([r["train_loss_full"] for r in runs])))
    lr = max(by_lr, key=lambda k: by_lr[k][0])
    return {"score": by_lr[lr][0], "train_loss": by_lr[lr][1], "lr": lr}
