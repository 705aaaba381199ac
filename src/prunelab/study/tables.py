"""The report's tables, Table 1 (Markdown, CSV, LaTeX), the layer-drop table and the methods table (Markdown, CSV),
from ``collect``'s data."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

MISSING = "—"
REGIME_LABELS = {"pruned": "Pruned (during pre-training)", "information_deletion": "Information deletion",
                 "pruned_after_finetuning": "Pruned after fine-tuning", "random": "Random pruning",
                 "layer_drop": "Layer dropping", "structured": "Structured pruning (heads, FFN neurons)", "adapt": "Adapting by pruning (learned masks)",
                 "distill": "Knowledge-aware pruning (distilled)", "pruned_during_finetuning": "Pruned during fine-tuning",
                 "oneshot": "One-shot, fine-tuned model (no retraining)",
                 "oneshot_finetuned": "One-shot, fine-tuned model, then fine-tuned on"}


def _fmt(value: float | None, digits: int) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(cell: dict | None) -> str:
    return MISSING if cell is None else f"{cell['score']:.1f} ({_fmt(cell['train_loss'], 2)})"


def _cells(data: dict, row: dict) -> list[str]:
    """A row's task cells, then its average."""
    return [_cell(row["cells"][t]) for t in data["tasks"]] + [_cell(row["average"])]


def _tasks_header(data: dict, sep: str) -> str:
    return sep.join(t.upper() for t in data["tasks"])


def table_markdown(data: dict) -> str:
    lines = ["| Regime | Sparsity | Pre-train loss | " + _tasks_header(data, " | ") + " | Avg. |",
             "|---|---:|---:|" + "---:|" * (len(data["tasks"]) + 1)]
    for row in data["rows"]:
        lines.append(f"| {REGIME_LABELS[row['regime']]} | {row['sparsity']:.0%} | {_fmt(row['pretrain_loss'], 2)} | "
                     + " | ".join(_cells(data, row)) + " |")
    return "\n".join(lines) + "\n"


def table_latex(data: dict) -> str:
    lines = [r"\begin{tabular}{ll" + "r" * (len(data["tasks"]) + 2) + "}", r"\toprule",
             "Regime & Sparsity & Pre-train loss & " + _tasks_header(data, " & ") + r" & Avg. \\", r"\midrule"]
    for row in data["rows"]:
        cells = [c.replace(MISSING, "--") for c in _cells(data, row)]
        pre = _fmt(row["pretrain_loss"], 2).replace(MISSING, "--")
        lines.append(f"{REGIME_LABELS[row['regime']]} & {row['sparsity'] * 100:.0f}\\% & {pre} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def layer_drop_markdown(data: dict) -> str:
    lines = ["| Strategy | Layers dropped | Which (0-based) | Layers kept | Params kept | Forward time | "
             + _tasks_header(data, " | ") + " | Avg. |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * (len(data["tasks"]) + 1)]
    for row in data["layer_drop"]:
        which = MISSING if row["dropped"] is None else ", ".join(map(str, row["dropped"])) or "none"
        kept = MISSING if row["layers_after"] is None else f"{row['layers_after']}" + (f" of {row['layers']}" if row["layers"] else "")
        params = MISSING if row["params_kept"] is None else f"{row['params_kept']:.1%}"
        time = MISSING if row["time_ratio"] is None else f"{row['time_ratio']:.2f}x"
        lines.append(f"| {_strategy_label(row['strategy'])} | {row['count']} | {which} | {kept} | {params} | {time} | "
                     + " | ".join(_cells(data, row)) + " |")
    return "\n".join(lines) + "\n"


def methods_markdown(data: dict) -> str:
    lines = ["| Method | Setting | Encoder weights kept | " + _tasks_header(data, " | ") + " | Avg. |",
             "|---|---|---:|" + "---:|" * (len(data["tasks"]) + 1)]
    for row in data["methods"]:
        kept = MISSING if row["kept"] is None else f"{row['kept']:.1%}"
        lines.append(f"| {row['method']} | {row['setting'] or 'none'} | {kept} | " + " | ".join(_cells(data, row)) + " |")
    return "\n".join(lines) + "\n"


def methods_csv(data: dict) -> str:
    return _csv(data, data["methods"], ["method", "setting", "encoder_weights_kept"],
                lambda row: [row["method"], row["setting"], row["kept"]])


FORMS = {"fp32": "FP32", "int8": "INT8 ONNX", "vocab": "vocabulary cut"}  # the deployment table's forms (results.deployment_points)


def _bytes(d: dict) -> int:
    return d["onnx_bytes"] if "onnx_bytes" in d else d["compressed_bytes"]


def deployment_markdown(data: dict) -> str:
    from .results import deployment_points, pareto_front

    points = deployment_points(data["methods"])
    front, dense = pareto_front(points), data["methods"][0]["deployment"]
    int8 = any(p["form"] != "fp32" for p in points)  # only then the Form column: a study without INT8 is unchanged
    lines = ["| | Method | Setting |" + (" Form |" if int8 else "") + " Avg. score | Encoder weights kept | "
             + ("MB on disk" if int8 else "Compressed MB") + " | Latency ms | vs dense |",
             "|---|---|---|" + ("---|" if int8 else "") + "---:|---:|---:|---:|---:|"]
    for i, row in enumerate(points):
        d = row["deployment"]
        score = MISSING if row["average"] is None else f"{row['average']['score']:.1f}" + ("†" if row["form"] != "fp32" else "")
        kept = MISSING if row["kept"] is None else f"{row['kept']:.1%}"
        size = MISSING if d is None else f"{_bytes(d) / 1e6:.2f}"
        latency = MISSING if d is None else f"{d['latency_ms']:.1f}"
        ratio = MISSING if d is None or dense is None else f"{d['latency_ms'] / dense['latency_ms']:.2f}x"
        form = f" {FORMS[row['form']]} |" if int8 else ""
        lines.append(f"| {'★' if i in front else ''} | {row['method']} | {row['setting'] or 'none'} |{form} {score} | "
                     f"{kept} | {size} | {latency} | {ratio} |")
    return "\n".join(lines) + "\n"


def deployment_csv(data: dict) -> str:
    from .results import deployment_points, pareto_front

    points = deployment_points(data["methods"])
    front = pareto_front(points)
    int8 = any(p["form"] != "fp32" for p in points)
    out = io.StringIO()
    writer = csv.writer(out)
    keys = ("compressed_bytes", "latency_ms", "p10_ms", "p90_ms", "noise_floor_ratio", "sparse_layers", "target_layers")
    extra = ("onnx_bytes", "paired_ratio", "weight_type", "max_abs_diff", "output_scale", "vocab_after") if int8 else ()
    writer.writerow(["method", "setting", *(["form"] if int8 else []), "pareto", "average_score", "encoder_weights_kept",
                     *keys, *extra])
    for i, row in enumerate(points):
        d = row["deployment"] or {}
        values = [row["method"], row["setting"], *([row["form"]] if int8 else []), int(i in front),
                  (row["average"] or {}).get("score"), row["kept"], *(d.get(k) for k in keys + extra)]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def _strategy_label(strategy: str) -> str:
    return "Dense (none dropped)" if strategy == "dense" else strategy


def table_csv(data: dict) -> str:
    return _csv(data, data["rows"], ["regime", "sparsity", "pretrain_loss"],
                lambda row: [row["regime"], row["sparsity"], row["pretrain_loss"]])


def layer_drop_csv(data: dict) -> str:
    def leading(row: dict) -> list:
        dropped = None if row["dropped"] is None else " ".join(map(str, row["dropped"]))
        return [row["strategy"], row["count"], dropped, row["layers_after"], row["params_kept"], row["time_ratio"]]

    return _csv(data, data["layer_drop"], ["strategy", "count", "dropped", "layers_after", "params_kept", "forward_time_ratio"],
                leading)


def _csv(data: dict, rows: list[dict], columns: list[str], leading: Callable[[dict], list]) -> str:
    """One line per row: its `leading` values under `columns`, then score, training loss and learning rate per
    task, then the averages; a missing value is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns + [f"{t}_{k}" for t in data["tasks"] for k in ("score", "train_loss", "lr")]
                    + ["average_score", "average_train_loss"])
    for row in rows:
        values = leading(row)
        for t in data["tasks"]:
            cell = row["cells"][t] or {}
            values += [cell.get("score"), cell.get("train_loss"), cell.get("lr")]
        values += [(row["average"] or {}).get("score"), (row["average"] or {}).get("train_loss")]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()
