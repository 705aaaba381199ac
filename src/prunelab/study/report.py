"""The report of a study, written by ``write_report``: its tables, figures and report.md in ``<study>/report/``."""

from __future__ import annotations

from pathlib import Path

from ..io import write_text
from .criteria_report import criteria_csv, criteria_markdown, criteria_md, figure_criteria
from .findings import budget, findings
from .figures import figure_1, figure_2, figure_deployment, figure_layer_drop, figure_methods
from .results import OFFICIAL, PAPER, collect
from .tables import (MISSING, deployment_csv, deployment_markdown, layer_drop_csv, layer_drop_markdown, methods_csv,
                     methods_markdown, table_csv, table_latex, table_markdown)

# What report.md says a cell is: "the best <this>, and in brackets the loss ...".
MEASURED = {
    "official": "dev score over learning rates (0-100, the mean of the task's official metrics)",
    "paper": "dev accuracy over learning rates (0-100; MNLI: matched only; STS-B, which has no accuracy: Pearson "
             "correlation) as in the paper (Gordon et al. 2020), not the official GLUE score (a run that did not "
             "record it leaves its cell missing)",
}


def write_report(root: str | Path, *, paper_metrics: bool = False) -> Path:
    """Write ``<root>/report/``: table1.{md,csv,tex}, figure1.png, figure2.png, comparing criteria criteria.{md,csv}
    and criteria.png, with the layer_drop regime
    layer_drop.{md,csv} and layer_drop.png, with layer_drop or structured methods.{md,csv} and methods.png (every
    method on one axis), where runs measured their models deployment.{md,csv} and deployment.png, and report.md.
    Returns the folder.

    With `paper_metrics` every cell (and the choice of its learning rate) uses the metric Compressing BERT
    reports (``results.paper_metric``) instead of the task's official GLUE score; the files keep their names.
    """
    root = Path(root)
    data = collect(root, PAPER if paper_metrics else OFFICIAL)
    out = root / "report"
    out.mkdir(exist_ok=True)
    for name, text in (("table1.md", table_markdown(data)), ("table1.csv", table_csv(data)), ("table1.tex", table_latex(data))):
        write_text(out / name, text)
    figure_1(data, out / "figure1.png")
    slopes = figure_2(data, out / "figure2.png")
    if data["criteria"] is not None:
        write_text(out / "criteria.md", criteria_markdown(data))
        write_text(out / "criteria.csv", criteria_csv(data))
        figure_criteria(data, out / "criteria.png")
    if data["layer_drop"] is not None:
        write_text(out / "layer_drop.md", layer_drop_markdown(data))
        write_text(out / "layer_drop.csv", layer_drop_csv(data))
        figure_layer_drop(data, out / "layer_drop.png")
    if _compares_methods(data):
        write_text(out / "methods.md", methods_markdown(data))
        write_text(out / "methods.csv", methods_csv(data))
        figure_methods(data, out / "methods.png")
    if _measured(data):
        write_text(out / "deployment.md", deployment_markdown(data))
        write_text(out / "deployment.csv", deployment_csv(data))
        figure_deployment(data, out / "deployment.png")
    write_text(out / "report.md", _report_md(data, slopes))
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
        f"- Each cell: the best {MEASURED[data['metric'].key]}, and in brackets the "
        "loss over the whole training set after fine-tuning. Pre-train loss: MLM dev loss of the starting model after pruning.",
        "", "## Budget: what this study can and cannot show", "", *budget(data),
        "", "## Table 1", "", "Also as [CSV](table1.csv) and [LaTeX](table1.tex).", "", table_markdown(data),
        *_findings_md(data),
        "## Figure 1: average dev score and training loss vs. sparsity", "", "![Figure 1](figure1.png)", "",
        "## Figure 2: how much is a bit of BERT worth to each task", "", "![Figure 2](figure2.png)", "",
        "Least-squares slope of dev score against pre-training loss (information deletion):", "",
    ]
    lines += [f"- {task.upper()}: {MISSING if s is None else f'{s:.1f} points per nat'}" for task, s in slopes.items()]
    if data["criteria"] is not None:
        lines += ["", *criteria_md(data)]
    if data["layer_drop"] is not None:
        lines += ["", *_layer_drop_md(data)]
    if _compares_methods(data):
        lines += ["", *_methods_md(data)]
    if _measured(data):
        lines += ["", *_deployment_md(data)]
    return "\n".join(lines) + "\n"


def _findings_md(data: dict) -> list[str]:
    checked = findings(data)
    if not checked:
        return []
    lines = ["## The paper's findings, checked on this table", "",
             f"Average dev score over the tasks; {sum(f.holds for f in checked)} of {len(checked)} hold.", ""]
    return lines + [f"- {'holds' if f.holds else 'DOES NOT HOLD'}: {f.claim}. {f.detail}." for f in checked] + [""]


def _compares_methods(data: dict) -> bool:
    return bool({"layer_drop", "structured"} & set(data["spec"].regimes))


def _measured(data: dict) -> bool:
    return any(r["deployment"] for r in data["methods"])


def _deployment_md(data: dict) -> list[str]:
    d = data["spec"].deployment
    return [
        "## Which model to ship", "",
        f"For each model a method fine-tunes from: the average dev score, the encoder-layer weights it keeps, its bytes "
        f"as a compressed artifact (lossless, zstd), and the CPU forward latency of its encoder at batch {d.batch_size} x "
        f"{d.seq_len} with the best execution `sparse_execution` found (dense unless a library sparse kernel measured "
        f"faster). Measured by the run that made the model, on the machine that ran it, median of {d.repeats} rounds "
        "interleaved with an identical copy (its ratio, the noise floor, is in the CSV); runs that shared the machine "
        "are noisier. ★ marks the Pareto front: no other model has a higher or equal score at a lower or equal latency.",
        *([] if not d.int8 else [
            "", "INT8 ONNX rows (`[deployment] int8`): the same encoder exported to ONNX and quantized to INT8 "
            "(onnxruntime's dynamic quantization), timed in the same interleaved rounds as the FP32 encoder; MB on disk "
            "is that file's size (the FP32 rows: the compressed artifact's). † The study does not score INT8 models (it "
            "keeps no fine-tuned classifier): an INT8 row carries its FP32 model's score, so the front assumes INT8 "
            "loses nothing. The CSV gives its output's largest difference to the FP32 graph's; `prunelab ship` "
            "measures the score of one fine-tuned model in each form."]),
        "", "Also as [CSV](deployment.csv).", "", deployment_markdown(data), "![Deployment](deployment.png)",
    ]


def _methods_md(data: dict) -> list[str]:
    spec = data["spec"]
    structured = (f" Structured: {spec.structured.criterion} ({spec.structured.scope} scope) removal of the given "
                  "fractions of attention heads and FFN neurons from the dense pre-trained model, fine-tuned like it."
                  if "structured" in spec.regimes else "")
    return [
        "## Every method on one axis", "",
        "Average dev score against the encoder-layer weights each model keeps: nonzero weights of its encoder layers "
        "over the dense pre-trained model's (embeddings and heads, which no method here shrinks, not counted). "
        "Unstructured: the pruned regime's models (zeros held while fine-tuning; as large as the dense model unless "
        "stored compressed). Layer dropping: whole layers removed." + structured, "",
        "Also as [CSV](methods.csv).", "", methods_markdown(data), "![Every method](methods.png)",
    ]


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
