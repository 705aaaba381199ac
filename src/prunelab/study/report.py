"""The report of a study: the paper's Table 1 (Markdown, CSV, LaTeX), Figures 1 and 2 (left), and report.md;
with the layer_drop regime also its own table (Markdown, CSV) and figure.

Cells: for each regime x sparsity x task, the best dev score over learning rates (each learning rate's
score averaged over seeds), scaled to 0-100 as GLUE reports it, with the loss over the whole training
set of that run beside it. The pre-training column is the MLM dev loss of the model the regime starts
from. A cell whose runs have not finished is marked missing (an em dash), so a partial study reports too.
The layer-drop table has the same cells per strategy x layers dropped, beside the layers dropped, the
parameters kept and the forward-pass time relative to the full model; its first row is the dense model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..glue import get_task
from .plan import DENSE_START, REGIMES, droplayers_id, expand, finetune_id, learning_rates, pretrain_id, variant
from .runner import open_study, run_dir, study_status

MISSING = "—"
REGIME_LABELS = {"pruned": "Pruned (during pre-training)", "information_deletion": "Information deletion",
                 "pruned_after_finetuning": "Pruned after fine-tuning", "random": "Random pruning",
                 "layer_drop": "Layer dropping", "adapt": "Adapting by pruning (learned masks)",
                 "distill": "Knowledge-aware pruning (distilled)", "pruned_during_finetuning": "Pruned during fine-tuning"}


def collect(root: str | Path) -> dict:
    """Read every finished run of the study in `root` into the table's cells.

    Returns:
        ``{"spec", "tasks", "regimes", "rows": [{"regime", "sparsity", "pretrain_loss", "cells": {task: {"score",
        "train_loss", "lr"} | None}, "average": {...} | None}], "layer_drop": [...] | None, "status"}``, where
        "regimes" are those varying sparsity (Table 1's) and "layer_drop" the layer-drop table's rows
        (see ``_layer_drop_rows``), ``None`` when the study has no layer_drop regime.
    """
    root = Path(root)
    spec, _ = open_study(root)
    results = {}
    for run in expand(spec):
        path = run_dir(root, run.id) / "result.json"
        if path.is_file():
            results[run.id] = json.loads(path.read_text())
    tasks = [get_task(t).name for t in spec.finetune.tasks]
    regimes = [r for r in spec.regimes if REGIMES[r].per_sparsity]
    rows = []
    for regime in regimes:
        for sparsity in spec.sparsities:
            criterion = "random" if regime == "random" else spec.criterion
            source = pretrain_id(0.0 if regime in DENSE_START else sparsity, criterion)
            pre = results.get(source)
            cells = {task: _best_cell(results, variant(regime, sparsity), task, spec) for task in tasks}
            rows.append({"regime": regime, "sparsity": sparsity, "pretrain_loss": pre["dev_loss_after"] if pre else None,
                         "cells": cells, "average": _average(cells)})
    layer_drop = _layer_drop_rows(results, spec, tasks) if "layer_drop" in spec.regimes else None
    return {"spec": spec, "tasks": tasks, "regimes": regimes, "rows": rows, "layer_drop": layer_drop, "status": study_status(root)}


def _average(cells: dict) -> dict | None:
    if not all(cells.values()):
        return None
    return {"score": float(np.mean([c["score"] for c in cells.values()])),
            "train_loss": float(np.mean([c["train_loss"] for c in cells.values()]))}


def _layer_drop_rows(results: dict, spec, tasks: list[str]) -> list[dict]:
    """The dense row, then one per strategy x count: ``{"strategy", "count", "dropped", "layers",
    "layers_after", "params_kept", "time_ratio", "cells", "average"}``; measurements are ``None`` until
    the run that drops the layers has finished."""
    dropped = {(s, k): results.get(droplayers_id(s, k)) for s in spec.layer_drop.strategies for k in spec.layer_drop.counts}
    layers = next((r["layers_before"] for r in dropped.values() if r), None)
    dense_cells = {task: _best_cell(results, variant("dense", 0.0), task, spec) for task in tasks}
    rows = [{"strategy": "dense", "count": 0, "dropped": [], "layers": layers, "layers_after": layers, "params_kept": 1.0,
             "time_ratio": 1.0, "cells": dense_cells, "average": _average(dense_cells)}]
    for (strategy, count), run in dropped.items():
        cells = {task: _best_cell(results, variant("layer_drop", strategy=strategy, count=count), task, spec) for task in tasks}
        rows.append({
            "strategy": strategy, "count": count, "dropped": run["dropped"] if run else None, "layers": layers,
            "layers_after": run["layers_after"] if run else None,
            "params_kept": run["params_after"] / run["params_before"] if run else None,
            "time_ratio": run["seconds_after"] / run["seconds_before"] if run else None,
            "cells": cells, "average": _average(cells),
        })
    return rows


def _best_cell(results: dict, variant_name: str, task: str, spec) -> dict | None:
    by_lr = {}
    for lr in learning_rates(spec, variant_name.split("-")[0]):
        runs = [results.get(finetune_id(variant_name, task, lr, seed)) for seed in spec.finetune.seeds]
        if any(r is None for r in runs):
            return None  # a missing run makes the cell missing: the best of a partial grid is not the best
        by_lr[lr] = (float(np.mean([r["dev_score"] for r in runs])) * 100, float(np.mean([r["train_loss_full"] for r in runs])))
    lr = max(by_lr, key=lambda k: by_lr[k][0])
    return {"score": by_lr[lr][0], "train_loss": by_lr[lr][1], "lr": lr}


# -- tables -------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_markdown(data: dict) -> str:
    tasks = data["tasks"]
    lines = ["| Regime | Sparsity | Pre-train loss | " + " | ".join(t.upper() for t in tasks) + " | Avg. |",
             "|---|---:|---:|" + "---:|" * (len(tasks) + 1)]
    for row in data["rows"]:
        cells = [_cell(row["cells"][t]) for t in tasks] + [_cell(row["average"])]
        lines.append(f"| {REGIME_LABELS[row['regime']]} | {row['sparsity']:.0%} | {_fmt(row['pretrain_loss'], 2)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(cell: dict | None) -> str:
    return MISSING if cell is None else f"{cell['score']:.1f} ({cell['train_loss']:.2f})"


def table_csv(data: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["regime", "sparsity", "pretrain_loss"] + [f"{t}_{k}" for t in data["tasks"] for k in ("score", "train_loss", "lr")]
                    + ["average_score", "average_train_loss"])
    for row in data["rows"]:
        values = [row["regime"], row["sparsity"], row["pretrain_loss"]]
        for t in data["tasks"]:
            cell = row["cells"][t] or {}
            values += [cell.get("score"), cell.get("train_loss"), cell.get("lr")]
        values += [(row["average"] or {}).get("score"), (row["average"] or {}).get("train_loss")]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def table_latex(data: dict) -> str:
    tasks = data["tasks"]
    lines = [r"\begin{tabular}{ll" + "r" * (len(tasks) + 2) + "}", r"\toprule",
             "Regime & Sparsity & Pre-train loss & " + " & ".join(t.upper() for t in tasks) + r" & Avg. \\", r"\midrule"]
    for row in data["rows"]:
        cells = [_cell(row["cells"][t]).replace(MISSING, "--") for t in tasks] + [_cell(row["average"]).replace(MISSING, "--")]
        pre = _fmt(row["pretrain_loss"], 2).replace(MISSING, "--")
        lines.append(f"{REGIME_LABELS[row['regime']]} & {row['sparsity'] * 100:.0f}\\% & {pre} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def layer_drop_markdown(data: dict) -> str:
    tasks = data["tasks"]
    lines = ["| Strategy | Layers dropped | Which (0-based) | Layers kept | Params kept | Forward time | "
             + " | ".join(t.upper() for t in tasks) + " | Avg. |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * (len(tasks) + 1)]
    for row in data["layer_drop"]:
        which = MISSING if row["dropped"] is None else ", ".join(map(str, row["dropped"])) or "none"
        kept = MISSING if row["layers_after"] is None else f"{row['layers_after']}" + (f" of {row['layers']}" if row["layers"] else "")
        params = MISSING if row["params_kept"] is None else f"{row['params_kept']:.1%}"
        time = MISSING if row["time_ratio"] is None else f"{row['time_ratio']:.2f}x"
        cells = [_cell(row["cells"][t]) for t in tasks] + [_cell(row["average"])]
        lines.append(f"| {_strategy_label(row['strategy'])} | {row['count']} | {which} | {kept} | {params} | {time} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _strategy_label(strategy: str) -> str:
    return "Dense (none dropped)" if strategy == "dense" else strategy


def layer_drop_csv(data: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["strategy", "count", "dropped", "layers_after", "params_kept", "forward_time_ratio"]
                    + [f"{t}_{k}" for t in data["tasks"] for k in ("score", "train_loss", "lr")] + ["average_score", "average_train_loss"])
    for row in data["layer_drop"]:
        dropped = None if row["dropped"] is None else " ".join(map(str, row["dropped"]))
        values = [row["strategy"], row["count"], dropped, row["layers_after"], row["params_kept"], row["time_ratio"]]
        for t in data["tasks"]:
            cell = row["cells"][t] or {}
            values += [cell.get("score"), cell.get("train_loss"), cell.get("lr")]
        values += [(row["average"] or {}).get("score"), (row["average"] or {}).get("train_loss")]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


# -- figures ------------------------------------------------------------------------------------------


def figure_1(data: dict, path: Path) -> None:
    """Average dev score and average training loss vs sparsity, one line per regime."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for regime in data["regimes"]:
        rows = [r for r in data["rows"] if r["regime"] == regime and r["average"]]
        xs = [r["sparsity"] * 100 for r in rows]
        left.plot(xs, [r["average"]["score"] for r in rows], marker="o", label=REGIME_LABELS[regime])
        right.plot(xs, [r["average"]["train_loss"] for r in rows], marker="o", label=REGIME_LABELS[regime])
    left.set(title="Average GLUE dev score vs. sparsity", xlabel="Sparsity of the pruned weights (%)", ylabel="Average dev score (0-100)")
    right.set(title="Average training loss vs. sparsity", xlabel="Sparsity of the pruned weights (%)",
              ylabel="Loss over the whole training set (nats)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Study {data['spec'].name}: {', '.join(t.upper() for t in data['tasks'])}")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def figure_2(data: dict, path: Path) -> dict:
    """Pre-training loss vs information-deletion dev score per task, with least-squares lines and slopes.

    Returns:
        Task -> slope (dev score points per nat of pre-training loss), ``None`` with fewer than two points.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = [r for r in data["rows"] if r["regime"] == "information_deletion" and r["pretrain_loss"] is not None]
    slopes = {}
    for task in data["tasks"]:
        points = [(r["pretrain_loss"], r["cells"][task]["score"]) for r in rows if r["cells"][task]]
        if not points:
            slopes[task] = None
            continue
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        dots = ax.scatter(xs, ys, label=task.upper())
        if len(points) >= 2 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, ys, 1)
            slopes[task] = float(slope)
            grid = np.linspace(xs.min(), xs.max(), 20)
            ax.plot(grid, slope * grid + intercept, color=dots.get_facecolor()[0], label=f"{task.upper()} fit: slope {slope:.1f}")
        else:
            slopes[task] = None
    ax.set(title="Pre-training loss vs. information-deletion dev score", xlabel="MLM dev loss after pruning (nats)",
           ylabel="Dev score (0-100)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished information-deletion runs yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return slopes


def figure_layer_drop(data: dict, path: Path) -> None:
    """Average dev score and forward-pass time vs layers dropped, one line per strategy, each from the dense model at 0."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    dense, *rows = data["layer_drop"]
    for strategy in data["spec"].layer_drop.strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        scored = ([dense] if dense["average"] else []) + [r for r in mine if r["average"]]
        timed = [dense] + [r for r in mine if r["time_ratio"] is not None]
        line, = left.plot([r["count"] for r in scored], [r["average"]["score"] for r in scored], marker="o", label=strategy)
        right.plot([r["count"] for r in timed], [r["time_ratio"] * 100 for r in timed], marker="o", label=strategy,
                   color=line.get_color())
    if dense["average"]:
        left.axhline(dense["average"]["score"], color="gray", linestyle=":", label="Dense")
    counts = [0, *data["spec"].layer_drop.counts]
    if dense["layers"]:
        right.plot(counts, [100 * (dense["layers"] - k) / dense["layers"] for k in counts], color="gray", linestyle="--",
                   label="In proportion to layers kept")
    left.set(title="Average GLUE dev score vs. layers dropped", xlabel="Layers dropped", ylabel="Average dev score (0-100)")
    right.set(title="Forward-pass time vs. layers dropped", xlabel="Layers dropped",
              ylabel="Forward time (% of the full model)")
    for ax in (left, right):
        ax.set_xticks(counts)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Study {data['spec'].name}, layer dropping: {', '.join(t.upper() for t in data['tasks'])}")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the report's figures need matplotlib: pip install 'prunelab[plots]'") from None
    return plt


# -- the report ---------------------------------------------------------------------------------------


def write_report(root: str | Path) -> Path:
    """Write ``<root>/report/``: table1.{md,csv,tex}, figure1.png, figure2.png, with the layer_drop regime
    layer_drop.{md,csv} and layer_drop.png, and report.md. Returns the folder."""
    root = Path(root)
    data = collect(root)
    out = root / "report"
    out.mkdir(exist_ok=True)
    for name, text in (("table1.md", table_markdown(data)), ("table1.csv", table_csv(data)), ("table1.tex", table_latex(data))):
        _write(out / name, text)
    figure_1(data, out / "figure1.png")
    slopes = figure_2(data, out / "figure2.png")
    if data["layer_drop"] is not None:
        _write(out / "layer_drop.md", layer_drop_markdown(data))
        _write(out / "layer_drop.csv", layer_drop_csv(data))
        figure_layer_drop(data, out / "layer_drop.png")
    _write(out / "report.md", _report_md(data, slopes))
    return out


def _report_md(data: dict, slopes: dict) -> str:
    spec, status = data["spec"], data["status"]
    missing = sum(1 for r in data["rows"] + (data["layer_drop"] or []) for c in r["cells"].values() if c is None)
    f, p = spec.finetune, spec.pretrain
    lines = [
        f"# Study {spec.name}", "",
        f"Runs: {status['done']} done, {status['failed']} failed, {status['running']} running, {status['pending']} pending, "
        f"{status['blocked']} blocked, of {status['total']}." + (f" {missing} table cells are missing ({MISSING})." if missing else ""), "",
        "## Settings", "",
        f"- Model: `{spec.model}`; prunable weights pruned by {spec.criterion} ({spec.scope} scope); random regime: random scores.",
        f"- Pre-training: {p.steps} MLM steps (batch {p.batch_size}, {p.max_seq_len} tokens, lr {p.lr:g}), cubic schedule 0 -> s "
        f"over the first {p.prune_end or p.steps} steps, masks updated every {p.prune_every}; corpus {', '.join(spec.data.corpus)}.",
        f"- Fine-tuning: tasks {', '.join(t.upper() for t in data['tasks'])}; {f.epochs:g} epochs (pruned after fine-tuning: "
        f"{f.prune_after_epochs:g} dense + {f.epochs_after_pruning:g} pruned); learning rates {', '.join(f'{lr:g}' for lr in f.lrs)}; "
        f"seeds {', '.join(map(str, f.seeds))}; batch {f.batch_size}; {f.max_seq_len} tokens"
        + (f"; {f.max_train_samples} training examples per task" if f.max_train_samples else "") + ".",
        f"- Sparsities: {', '.join(f'{s:.0%}' for s in spec.sparsities)}.", "",
        "## What was measured", "",
        "- Each cell: the best dev score over learning rates (0-100, the mean of the task's official metrics), and in brackets the "
        "loss over the whole training set after fine-tuning. Pre-train loss: MLM dev loss of the starting model after pruning.",
        "", "## Table 1", "", "Also as [CSV](table1.csv) and [LaTeX](table1.tex).", "", table_markdown(data),
        "## Figure 1: average dev score and training loss vs. sparsity", "", "![Figure 1](figure1.png)", "",
        "## Figure 2: how much is a bit of BERT worth to each task", "", "![Figure 2](figure2.png)", "",
        "Least-squares slope of dev score against pre-training loss (information deletion):", "",
    ]
    lines += [f"- {task.upper()}: {MISSING if s is None else f'{s:.1f} points per nat'}" for task, s in slopes.items()]
    if data["layer_drop"] is not None:
        lines += ["", *_layer_drop_md(data)]
    return "\n".join(lines) + "\n"


def _layer_drop_md(data: dict) -> list[str]:
    ld = data["spec"].layer_drop
    return [
        "## Layer dropping (Sajjad et al. 2020, \"Poor Man's BERT\")", "",
        f"Strategies {', '.join(ld.strategies)}; {', '.join(map(str, ld.counts))} layers dropped from the dense "
        "pre-trained model (the one the sparsity-0 row starts from), then fine-tuned like the dense model, over the "
        "same learning rates and seeds. Contribution: the layers whose input and output [CLS] vectors are most "
        "similar on the sample text packaged with prunelab. Params kept: of the pre-trained model, embeddings and "
        "MLM head included. Forward time: median of 5 forward passes of 16 sample sentences after over before "
        "dropping, measured in the same run (noisy when runs share the machine).", "",
        "Also as [CSV](layer_drop.csv).", "", layer_drop_markdown(data),
        "![Layer dropping](layer_drop.png)",
    ]


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    tmp.replace(path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
