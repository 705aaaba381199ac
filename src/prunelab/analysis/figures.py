"""Figures of the analyses: each function takes an analysis result and writes one PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_output
from ..targets import KINDS

_LAYERLESS = {"embeddings": "emb", "pooler": "pool"}
_DPI = 120


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, imported only when a figure is drawn."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("figures need matplotlib; run: pip install 'prunelab[analysis]' (or skip figures: "
                          "--no-figure, or figure=False in write_analysis)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` as PNG atomically (``prunelab.io``) and close it, even when writing fails."""
    try:
        # Not io.save_figure: these figures are cropped to their content (bbox_inches="tight").
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return Path(path)


def _kinds_in(rows) -> list[str]:
    present = {r["kind"] for r in rows}
    return [k for k in KINDS if k in present]


def _by_layer(ax, rows: list[dict], key: str, err: str | None = None) -> None:
    """Plot ``row[key]`` against layer, one line per kind; embeddings/pooler as points left/right of the layers."""
    layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
    last = layers[-1] if layers else 0
    where = {"embeddings": -1, "pooler": last + 1}
    for kind in _kinds_in(rows):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: -2 if r["layer"] is None else r["layer"])
        x = [where.get(kind, -1) if r["layer"] is None else r["layer"] for r in mine]
        y = [r[key] for r in mine]
        yerr = [r[err] for r in mine] if err else None
        style = "s" if mine[0]["layer"] is None else "o-"
        ax.errorbar(x, y, yerr=yerr, fmt=style, capsize=3 if err else 0, label=kind, markersize=5)
    ticks = ([-1] if any(r["kind"] == "embeddings" for r in rows) else []) + layers
    labels = ["emb" if t == -1 else str(t) for t in ticks]
    if any(r["kind"] == "pooler" for r in rows):
        ticks, labels = ticks + [last + 1], labels + ["pool"]
    ax.set_xticks(ticks, labels)
    ax.set_xlabel("layer (emb = word embeddings, pool = pooler)")
    ax.grid(alpha=0.3)


def plot_weight_stats(stats: dict, path, title: str) -> Path:
    """Two panels: the mean and the standard deviation of each target matrix, by layer and kind."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(13, 4.8))
    _by_layer(axes[0], stats["targets"], "mean")
    axes[0].set_ylabel("mean weight value")
    axes[0].set_title("mean of each matrix")
    _by_layer(axes[1], stats["targets"], "std")
    axes[1].set_ylabel("standard deviation of weight values")
    axes[1].set_title("standard deviation of each matrix")
    fig.legend(*axes[0].get_legend_handles_labels(), title="kind", fontsize=8, loc="outside right center")
    overall = stats["overall"]
    fig.suptitle(f"{title}\nall targets: mean {overall['mean']:.2e}, std {overall['std']:.4f}, {overall['numel']:,} weights")
    return _save(fig, path)


def plot_mass(mass: dict, path, title: str) -> Path:
    """Pruned weight mass against sparsity: absolute sum of |w| by kind, and the fraction of each kind's mass."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(13, 4.8))
    kinds = [k for k in mass["total_mass"] if k != "all"] + ["all"]
    for kind in kinds:
        rows = [r for r in mass["rows"] if r["kind"] == kind]
        x = [100 * r["sparsity"] for r in rows]
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if kind == "all" else {}
        axes[0].plot(x, [r["pruned_mass"] for r in rows], marker="o", markersize=4, label=kind, **style)
        axes[1].plot(x, [100 * r["fraction"] for r in rows], marker="o", markersize=4, label=kind, **style)
    axes[0].set_ylabel("sum of |w| pruned (weight units)")
    axes[0].set_title("weight mass removed")
    axes[1].set_ylabel("|w| mass pruned (% of that kind's total)")
    axes[1].set_title("share of each kind's |w| mass removed")
    axes[1].plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle=":", label="same % as weights")
    for ax in axes:
        ax.set_xlabel(f"sparsity (% of weights pruned, {mass['scope']} scope)")
        ax.grid(alpha=0.3)
    fig.legend(*axes[1].get_legend_handles_labels(), title="kind", fontsize=8, loc="outside right center")
    fig.suptitle(title)
    return _save(fig, path)


def plot_heads(heads: dict, path, title: str) -> Path:
    """Fraction pruned per attention head against sparsity: min-max band and mean, overall and per kind."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(13, 4.8), sharey=True)
    summary = heads["summary"]
    rows = [r for r in summary if r["kind"] == "all"]
    x = [100 * r["sparsity"] for r in rows]
    axes[0].fill_between(x, [100 * r["min"] for r in rows], [100 * r["max"] for r in rows], alpha=0.3, label="min-max over heads")
    axes[0].plot(x, [100 * r["mean"] for r in rows], "o-", label="mean over heads")
    axes[0].set_title(f"all attention matrices ({heads['heads']} heads each)")
    kinds = [k for k in KINDS if any(r["kind"] == k for r in summary)]
    width = 10 / (len(kinds) + 1)
    for i, kind in enumerate(kinds):
        mine = [r for r in summary if r["kind"] == kind]
        xs = [100 * r["sparsity"] + (i - (len(kinds) - 1) / 2) * width for r in mine]
        mean = [100 * r["mean"] for r in mine]
        axes[1].errorbar(xs, mean, yerr=[[m - 100 * r["min"] for m, r in zip(mean, mine)],
                                         [100 * r["max"] - m for m, r in zip(mean, mine)]],
                         fmt="o", capsize=2, markersize=3, label=kind)
    axes[1].set_title("per kind: mean, bars from min to max head")
    for ax in axes:
        ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle=":", label="head pruned at matrix sparsity")
        ax.set_xlabel("sparsity of each matrix (% of weights pruned)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("weights pruned in a head (% of the head)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_key_heatmap(data: dict, path, title: str) -> Path:
    """|w| of a key projection: input dimension down, each head's output units across, heads separated."""
    plt = _pyplot()
    magnitude = data["magnitude"].numpy()
    fig, ax = plt.subplots(layout="constrained", figsize=(12, 6))
    image = ax.imshow(magnitude, aspect="auto", cmap="viridis", interpolation="nearest",
                      vmax=float(data["magnitude"].quantile(0.99)) if data["magnitude"].numel() < 2**24 else None)
    d_head = data["d_head"]
    for h in range(1, data["heads"]):
        ax.axvline(h * d_head - 0.5, color="white", linewidth=0.8)
    ax.set_xticks([h * d_head + d_head / 2 - 0.5 for h in range(data["heads"])], [str(h) for h in range(data["heads"])])
    ax.set_xlabel(f"attention head (each block: its {d_head} output units)")
    ax.set_ylabel("input dimension")
    fig.colorbar(image, ax=ax, label="|w| (clipped at the 99th percentile)")
    ax.set_title(f"{title}\n{data['name']}")
    return _save(fig, path)


def plot_embedding_heatmap(data: dict, path, title: str, max_rows: int = 1200) -> Path:
    """Word-embedding |w| with rows sorted by subword length (rows averaged in groups to fit), and mean |w| by length."""
    plt = _pyplot()
    magnitude, lengths = data["magnitude"], data["lengths"]
    rows = magnitude.shape[0]
    group = max(1, -(-rows // max_rows))
    usable = rows // group * group
    pooled = magnitude[:usable].reshape(-1, group, magnitude.shape[1]).mean(dim=1)
    fig, (ax, side) = plt.subplots(1, 2, layout="constrained", figsize=(13, 7), gridspec_kw={"width_ratios": [3, 1]})
    image = ax.imshow(pooled.numpy(), aspect="auto", cmap="viridis", interpolation="nearest",
                      vmax=float(pooled.quantile(0.99)))
    ticks, labels, previous = [], [], None
    for i in range(0, usable, group):
        n = int(lengths[i])
        if n != previous and (not ticks or i // group - ticks[-1] >= pooled.shape[0] / 40):
            ticks.append(i // group)
            labels.append(str(n))
        previous = n
    ax.set_yticks(ticks, labels)
    ax.set_ylabel(f"vocabulary entries sorted by subword length (characters); {group} rows per pixel row")
    ax.set_xlabel("embedding dimension")
    fig.colorbar(image, ax=ax, label="mean |w| (clipped at the 99th percentile)")
    ax.set_title(f"{data['name']}: {rows:,} rows")
    by_length = data["by_length"]
    side.barh([str(b["length"]) for b in by_length], [b["mean_abs"] for b in by_length], color="tab:blue")
    side.invert_yaxis()
    side.set_xlabel("mean |w| of the rows")
    side.set_ylabel("subword length (characters)")
    side.set_title("by subword length")
    side.tick_params(axis="y", labelsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_movement(movement: dict, path, title: str) -> Path:
    """Sort-order movement: histogram, mean |movement| by layer and kind, and movement by starting position."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, layout="constrained", figsize=(17, 4.8))
    edges, counts = movement["histogram"]["edges"], movement["histogram"]["counts"]
    total = max(sum(counts), 1)
    axes[0].bar(edges[:-1], [100 * c / total for c in counts], width=edges[1] - edges[0], align="edge")
    axes[0].set_yscale("log")
    reach = max(abs(e) for e, c in zip(edges, counts) if c) + 2 * (edges[1] - edges[0]) if any(counts) else 100.0
    axes[0].set_xlim(-min(reach, 100.0), min(reach, 100.0))  # the counts lie in [-reach, reach]
    axes[0].set_xlabel("movement in sort order (percentage points; + = relatively larger)")
    axes[0].set_ylabel("weights (% of all targets, log scale)")
    overall = movement["overall"]
    axes[0].set_title(f"all weights: mean |movement| {overall['mean_abs']:.2f}, std {overall['std']:.2f} points")
    _by_layer(axes[1], movement["targets"], "mean_abs")
    axes[1].set_ylabel("mean |movement| (percentage points)")
    axes[1].set_title("per matrix")
    axes[1].legend(title="kind", fontsize=7)
    bins = movement["bins"]
    mid = [(b["start_lo"] + b["start_hi"]) / 2 for b in bins]
    axes[2].errorbar(mid, [b["mean"] for b in bins], yerr=[b["std"] for b in bins], fmt="o-", capsize=3,
                     label="mean movement ± std")
    axes[2].plot(mid, [b["mean_abs"] for b in bins], "s--", label="mean |movement|")
    axes[2].axhline(0, color="grey", linewidth=0.8)
    axes[2].set_xlabel("starting position in sort order (percentile of |w| in its matrix)")
    axes[2].set_ylabel("movement (percentage points)")
    axes[2].set_title("by starting magnitude")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_mask_diff(diff: dict, path, title: str) -> Path:
    """Fraction of weights the two masks disagree on, per matrix by layer and kind, with the random-mask baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9, 5))
    rows = [{**r, "differ_pct": 100 * r["differ"]} for r in diff["targets"] if r["kind"] is not None]
    _by_layer(ax, rows, "differ_pct")
    overall = diff["overall"]
    ax.axhline(100 * overall["random_baseline"], color="grey", linestyle="--",
               label=f"two random masks: {100 * overall['random_baseline']:.1f}%")
    ax.axhline(100 * overall["differ"], color="black", linestyle=":", label=f"overall: {100 * overall['differ']:.2f}%")
    ax.set_ylabel("weights pruned by one mask, kept by the other (%)")
    # Symmetric log: differences of a fraction of a percent and the random baseline of tens of percent both show.
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0, top=100)
    fig.legend(*ax.get_legend_handles_labels(), title="kind", fontsize=8, loc="outside right center")
    ax.set_title(f"{title}\nsparsity A {100 * overall['sparsity_a']:.1f}%, B {100 * overall['sparsity_b']:.1f}%")
    return _save(fig, path)


def plot_similarity(similarity: dict, path, title: str) -> Path:
    """Mean cosine similarity of hidden states to the reference, per layer, one line per compared model."""
    plt = _pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(9, 5.5))
    cmap = plt.get_cmap("viridis")
    pruned = [c for c in similarity["curves"] if c["sparsity"] is not None]
    for c in similarity["curves"]:
        if c["sparsity"] is None:
            ax.plot(similarity["layers"], c["mean"], "k*-", linewidth=2, markersize=9, label=c["label"])
        else:
            ax.plot(similarity["layers"], c["mean"], "o-", markersize=4, label=c["label"],
                    color=cmap(pruned.index(c) / max(len(pruned) - 1, 1) * 0.9))
    ax.set_xticks(similarity["layers"], ["emb"] + [str(i) for i in similarity["layers"][1:]])
    ax.set_xlabel("hidden state (emb = embedding output, N = output of layer N)")
    ax.set_ylabel("mean cosine similarity to the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=2)
    ax.set_title(f"{title}\n{similarity['tokens']:,} tokens")
    return _save(fig, path)


def plot_sensitivity(result: dict, path, title: str) -> Path:
    """Change in the metric when only one group is pruned, one bar per group (and all targets together)."""
    plt = _pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(layout="constrained", figsize=(max(6, 0.7 * len(rows) + 2), 5))
    colors = ["tab:red" if r["group"] == "all" else "tab:blue" for r in rows]
    ax.bar([r["group"] for r in rows], [r["delta"] for r in rows], color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    if result["metric"] == "mlm_loss":
        ax.set_ylabel(f"MLM loss increase (nats per masked token; unpruned {result['baseline']:.3f})")
    else:
        ax.set_ylabel("change in last-layer cosine similarity to the unpruned model")
    ax.set_xlabel(f"part pruned alone (grouped by {result['by']}; red: all targets)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{title}\neach part pruned to {100 * result['sparsity']:.0f}% by magnitude")
    return _save(fig, path)
