"""The report's criteria comparison: every criterion of the spec's ``criteria`` axis in each regime that takes it,
as a table (average dev score per sparsity; Markdown, CSV) and a figure (score against sparsity, one curve per
regime x criterion), from ``collect``'s ``"criteria"`` rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..io import pyplot
from .figures import finish
from .tables import MISSING, REGIME_LABELS

# How each regime's curves are drawn: the one-shot criteria without retraining dashed, with it solid.
LINESTYLE = {"oneshot": "--", "oneshot_finetuned": "-"}


def _series(data: dict) -> dict[tuple[str, str], list[dict]]:
    """(regime, criterion) -> its rows by sparsity, in the order the spec lists them."""
    out: dict[tuple[str, str], list[dict]] = {}
    for row in data["criteria"]:
        out.setdefault((row["regime"], row["criterion"]), []).append(row)
    return out


def criteria_markdown(data: dict) -> str:
    sparsities = data["spec"].sparsities
    lines = ["| Regime | Criterion | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
             "|---|---|" + "---:|" * len(sparsities)]
    for (regime, criterion), rows in _series(data).items():
        cells = [MISSING if r["average"] is None else f"{r['average']['score']:.1f}" for r in rows]
        lines.append(f"| {REGIME_LABELS[regime]} | {criterion} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def criteria_csv(data: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["regime", "criterion", "sparsity", *(f"{t}_score" for t in data["tasks"]), "average_score"])
    for row in data["criteria"]:
        scores = [(row["cells"][t] or {}).get("score") for t in data["tasks"]]
        values = [row["regime"], row["criterion"], row["sparsity"], *scores, (row["average"] or {}).get("score")]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def figure_criteria(data: dict, path: Path) -> None:
    """Average dev score against sparsity: one curve per regime x criterion, a colour per criterion, a line style per
    regime (one-shot without retraining dashed, with it solid, pruned while training dotted)."""
    plt = pyplot("the report's figures")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {c: f"C{i}" for i, c in enumerate(data["spec"].criteria)}
    for (regime, criterion), rows in _series(data).items():
        points = [(100 * r["sparsity"], r["average"]["score"]) for r in rows if r["average"]]
        if points:
            ax.plot(*zip(*points), marker="o", color=colours.get(criterion), linestyle=LINESTYLE.get(regime, ":"),
                    label=f"{criterion}: {REGIME_LABELS[regime]}")
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"Average {data['metric'].name} vs. sparsity, by criterion", xlabel="Sparsity of the pruned weights (%)",
           ylabel="Average dev score (0-100)")
    fig.suptitle(f"Study {data['spec'].name}: {', '.join(t.upper() for t in data['tasks'])}")
    finish(plt, fig, (ax,), path)


def criteria_md(data: dict) -> list[str]:
    """report.md's section."""
    spec = data["spec"]
    return [
        "## Criteria compared", "",
        f"Criteria {', '.join(spec.criteria)}, each in every regime whose command takes it. One-shot regimes start from "
        "the dense model fine-tuned on the task (its teacher run, the 0% column), pruned one-shot "
        f"(Wanda and SparseGPT calibrate on {spec.oneshot.calibration_samples} of the task's training examples; "
        f"left dense: {', '.join(spec.oneshot.exclude) or 'nothing'}), scored as it is, and after "
        f"{spec.finetune.epochs_after_pruning:g} more epochs with its masks held. Cells: the average dev score (best "
        "learning rate where there is a grid).", "",
        "Also as [CSV](criteria.csv).", "", criteria_markdown(data), "![Criteria](criteria.png)",
    ]
