"""The report's figures, Figure 1, Figure 2 (left) and the layer-drop figure, drawn from ``collect``'s data as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import pyplot, save_figure
from .tables import FORMS, REGIME_LABELS


def figure_1(data: dict, path: Path) -> None:
    """Average dev score and average training loss vs sparsity, one line per regime."""
    plt = pyplot("the report's figures")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for regime in data["regimes"]:
        rows = [r for r in data["rows"] if r["regime"] == regime and r["average"]]
        xs = [r["sparsity"] * 100 for r in rows]
        left.plot(xs, [r["average"]["score"] for r in rows], marker="o", label=REGIME_LABELS[regime])
        losses = [(x, r["average"]["train_loss"]) for x, r in zip(xs, rows) if r["average"]["train_loss"] is not None]
        right.plot([x for x, _ in losses], [y for _, y in losses], marker="o", label=REGIME_LABELS[regime])
    left.set(title=f"Average {data['metric'].name} vs. sparsity", xlabel="Sparsity of the pruned weights (%)",
             ylabel="Average dev score (0-100)")
    right.set(title="Average training loss vs. sparsity", xlabel="Sparsity of the pruned weights (%)",
              ylabel="Loss over the whole training set (nats)")
    fig.suptitle(f"Study {data['spec'].name}: {', '.join(t.upper() for t in data['tasks'])}")
    finish(plt, fig, (left, right), path)


def figure_2(data: dict, path: Path) -> dict:
    """Pre-training loss vs information-deletion dev score per task, with least-squares lines and slopes.

    Returns:
        Task -> slope (dev score points per nat of pre-training loss), ``None`` with fewer than two points.
    """
    plt = pyplot("the report's figures")
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
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "no finished information-deletion runs yet", ha="center", va="center", transform=ax.transAxes)
    finish(plt, fig, (ax,), path)
    return slopes


def figure_layer_drop(data: dict, path: Path) -> None:
    """Average dev score and forward-pass time vs layers dropped, one line per strategy, each from the dense model at 0."""
    plt = pyplot("the report's figures")
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
    left.set(title=f"Average {data['metric'].name} vs. layers dropped", xlabel="Layers dropped",
             ylabel="Average dev score (0-100)")
    right.set(title="Forward-pass time vs. layers dropped", xlabel="Layers dropped",
              ylabel="Forward time (% of the full model)")
    for ax in (left, right):
        ax.set_xticks(counts)
    fig.suptitle(f"Study {data['spec'].name}, layer dropping: {', '.join(t.upper() for t in data['tasks'])}")
    finish(plt, fig, (left, right), path)


def figure_methods(data: dict, path: Path) -> None:
    """Average dev score vs. encoder-layer weights kept: one line per method, each starting at the dense model."""
    plt = pyplot("the report's figures")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    dense, *rows = data["methods"]
    start = [dense] if dense["kept"] is not None and dense["average"] else []
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted(start + [r for r in rows if r["method"] == method and r["kept"] is not None and r["average"]],
                        key=lambda r: -r["kept"])
        ax.plot([100 * r["kept"] for r in points], [r["average"]["score"] for r in points], marker="o", label=method)
    if start:
        ax.plot([100 * dense["kept"]], [dense["average"]["score"]], marker="*", markersize=12, color="black",
                linestyle="none", label="dense")
    ax.invert_xaxis()  # smaller models to the right
    ax.set(title=f"Average {data['metric'].name} vs. encoder weights kept", xlabel="Encoder-layer weights kept (%)",
           ylabel="Average dev score (0-100)")
    fig.suptitle(f"Study {data['spec'].name}: {', '.join(t.upper() for t in data['tasks'])}")
    finish(plt, fig, (ax,), path)


def figure_deployment(data: dict, path: Path) -> None:
    """Average dev score vs. encoder latency, one colour per method (filled: FP32; hollow squares: the same models as
    INT8 ONNX files, at their FP32 score), the Pareto front over every point joined."""
    from .results import deployment_points, pareto_front

    plt = pyplot("the report's figures")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = deployment_points(data["methods"])
    for method in dict.fromkeys(r["method"] for r in points):
        color = None
        for form, style in (("fp32", {"marker": "o"}), ("int8", {"marker": "s", "markerfacecolor": "none"}),
                            ("vocab", {"marker": "^", "markerfacecolor": "none"})):
            mine = [r for r in points if r["method"] == method and r["form"] == form and r["deployment"] and r["average"]]
            if mine:
                line, = ax.plot([r["deployment"]["latency_ms"] for r in mine], [r["average"]["score"] for r in mine],
                                linestyle="none", label=method + ("" if form == "fp32" else f" ({FORMS[form]})"),
                                **({"color": color} if color else {}), **style)
                color = line.get_color()
    front = sorted((points[i]["deployment"]["latency_ms"], points[i]["average"]["score"]) for i in pareto_front(points))
    if front:
        ax.plot(*zip(*front), color="gray", linestyle="--", label="Pareto front")
    d = data["spec"].deployment
    ax.set(title=f"Average {data['metric'].name} vs. CPU latency", ylabel="Average dev score (0-100)",
           xlabel=f"Encoder forward latency at {d.batch_size} x {d.seq_len} (ms, best execution)")
    fig.suptitle(f"Study {data['spec'].name}: {', '.join(t.upper() for t in data['tasks'])}")
    finish(plt, fig, (ax,), path)


def finish(plt, fig, axes, path: Path) -> None:
    """Grid and legend (where anything is labelled) on each of `axes`; lay out, save atomically, close."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

