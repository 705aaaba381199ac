"""GLUE tasks: the task table, strict readers for the standard local layout and the HF hub, and the metrics.

The local layout is the one ``download_glue_data.py`` writes: ``<data_dir>/<Folder>/{train,dev}.tsv``,
tab-separated with no quoting, a header row except for CoLA, and MNLI's dev sets named
``dev_matched.tsv`` / ``dev_mismatched.tsv``. Columns are found by header name (by position for CoLA).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ..errors import InputError, MissingInputError


@dataclass(frozen=True)
class Task:
    """One GLUE task.

    Attributes:
        name: Short name (``sst2``).
        folder: Folder of the local layout (``SST-2``).
        text_columns: One or two text columns (header names; for CoLA, positions as strings).
        label_column: Label column (header name, or a position for CoLA).
        labels: Label strings in id order (the HF ``nyu-mll/glue`` order); ``None`` for regression (STS-B).
        metrics: Official dev metrics; the task's score is their mean (as the GLUE leaderboard averages).
        dev_splits: Dev split names; MNLI has matched and mismatched.
        hub_text_columns: Column names in the HF ``nyu-mll/glue`` dataset.
        header: Whether the TSV files have a header row.
        num_columns: Exact column count of a header-less file.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    hub_text_columns: tuple[str, ...] = ("sentence1", "sentence2")
    header: bool = True
    num_columns: int | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


TASKS: dict[str, Task] = {
    "cola": Task("cola", "CoLA", ("3",), "1", ("0", "1"), ("matthews_correlation",), hub_text_columns=("sentence",),
                 header=False, num_columns=4),
    "sst2": Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), hub_text_columns=("sentence",)),
    "mrpc": Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy")),
    "qqp": Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"),
                hub_text_columns=("question1", "question2")),
    "stsb": Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman")),
    "mnli": Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
                 ("accuracy",), dev_splits=("dev_matched", "dev_mismatched"), hub_text_columns=("premise", "hypothesis")),
    "qnli": Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
                 hub_text_columns=("question", "sentence")),
    "rte": Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",)),
}
_HUB_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}

Example = tuple[str, str | None, float | int]  # (text_a, text_b, label id or regression target)


def get_task(name: str) -> Task:
    """Look a task up by short or folder name, case-insensitively (``SST-2``, ``sst2``, ``STS-B``, ``stsb``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise InputError(f"unknown GLUE task {name!r}; allowed: {', '.join(t.folder for t in TASKS.values())} (or lower-case short names)")
    return TASKS[key]


def read_split(data_dir: str | Path, task: Task, split: str) -> list[Example]:
    """Read ``<data_dir>/<task.folder>/<split>.tsv``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a row with the wrong column count or a bad label, naming the file and line.
    """
    path = Path(data_dir) / task.folder / f"{split}.tsv"
    if not path.is_file():
        raise MissingInputError(f"GLUE file {path} not found; pass --data-dir with the download_glue_data.py layout (<dir>/{task.folder}/{split}.tsv)")
    csv.field_size_limit(sys.maxsize)
    examples: list[Example] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {err.start}); GLUE files are UTF-8") from None
    with io.StringIO(text, newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if task.header:
            header = next(rows, None) or []
            missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
            if missing:
                raise InputError(f"{path}:1: header lacks column {missing[0]!r}; is this the {task.folder} file?")
            width = len(header)
            text_idx = [header.index(c) for c in task.text_columns]
            label_idx = header.index(task.label_column)
        else:
            width = task.num_columns
            text_idx = [int(c) for c in task.text_columns]
            label_idx = int(task.label_column)
        first = 2 if task.header else 1
        for lineno, row in enumerate(rows, start=first):
            if not row:
                continue
            if len(row) != width:
                raise InputError(f"{path}:{lineno}: expected {width} tab-separated columns, found {len(row)}")
            texts = [row[i] for i in text_idx]
            examples.append((texts[0], texts[1] if len(texts) > 1 else None, _label(task, row[label_idx], path, lineno)))
    if not examples:
        raise InputError(f"{path} has no examples")
    return examples


def _label(task: Task, raw: str, path: Path, lineno: int) -> float | int:
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise InputError(f"{path}:{lineno}: score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise InputError(f"{path}:{lineno}: score {raw!r} is not a finite number")
        return score
    if raw not in task.labels:
        raise InputError(f"{path}:{lineno}: label {raw!r} is not one of {', '.join(task.labels)}")
    return task.labels.index(raw)


def read_hub_split(task: Task, split: str) -> list[Example]:
    """Read a split of ``nyu-mll/glue`` from the HF hub (needs ``pip install 'prunelab[datasets]'`` and network)."""
    try:
        import datasets
    except ImportError:
        raise InputError("reading GLUE from the hub needs the datasets package: pip install 'prunelab[datasets]'") from None
    try:
        rows = datasets.load_dataset("nyu-mll/glue", task.name, split=_HUB_SPLITS[split])
    except Exception as err:  # network or hub errors come in many types
        raise InputError(f"cannot load nyu-mll/glue {task.name} {split} from the hub: {str(err).splitlines()[0]}; "
                         "pass --data-dir with a local copy") from None
    columns = task.hub_text_columns
    return [(r[columns[0]], r[columns[1]] if len(columns) > 1 else None, r["label"]) for r in rows]


def load_task(task: Task, data_dir: str | Path | None) -> dict[str, list[Example]]:
    """Train and dev splits of `task`: from `data_dir` when given, else from the hub."""
    splits = ("train", *task.dev_splits)
    if data_dir is None:
        return {s: read_hub_split(task, s) for s in splits}
    return {s: read_split(data_dir, task, s) for s in splits}


# -- metrics ------------------------------------------------------------------------------------------


def compute_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics of `predictions` (logits, shape (n, num_labels)) against `labels` (n,).

    Returns:
        Each name in ``task.metrics`` plus ``score``, their mean; for a classification task also ``accuracy``
        (official or not: Compressing BERT reports accuracy for every task).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if task.is_regression:
        predicted = predictions.reshape(-1).astype(np.float64)
    else:
        predicted = predictions.argmax(-1) if predictions.ndim == 2 else predictions
    functions = {
        "accuracy": lambda: accuracy_score(labels, predicted),
        "f1": lambda: f1_score(labels, predicted),
        "matthews_correlation": lambda: matthews_corrcoef(labels, predicted),
        "pearson": lambda: pearsonr(predicted, labels.astype(np.float64))[0],
        "spearman": lambda: spearmanr(predicted, labels.astype(np.float64))[0],
    }
    out = {name: float(functions[name]()) for name in task.metrics}
    out = {k: (0.0 if np.isnan(v) else v) for k, v in out.items()}  # a constant prediction has no correlation
    out["score"] = float(np.mean(list(out.values())))
    if not task.is_regression and "accuracy" not in out:
        out["accuracy"] = float(functions["accuracy"]())
    return out
