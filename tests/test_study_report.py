"""The study report's metrics: the official GLUE score by default, the paper's metric with --paper-metrics."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prunelab.cli import main
from prunelab.study.results import official_score, paper_metric
from study_fixtures import make_study

LRS = (1e-3, 2e-3)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Pruned at sparsities 0 and 0.5 on RTE, two learning rates x two seeds: 10 runs, and the default report."""
    tmp = tmp_path_factory.mktemp("report")
    spec = make_study(tmp, regimes=["pruned"])
    spec.write_text(spec.read_text().replace("lrs = [1e-3]", "lrs = [1e-3, 2e-3]").replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["study", "run", str(spec), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def finetune_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("finetune-*/result.json"))]


def expected(out: Path, metric) -> dict[float, tuple[float, float]]:
    """Sparsity -> (100 x the best learning rate's mean over seeds of `metric`, that learning rate), from result.json."""
    by = {}
    for r in finetune_results(out):
        by.setdefault(r["sparsity"], {}).setdefault(r["lr"], []).append(metric(r))
    cells = {}
    for sparsity, by_lr in by.items():
        assert sorted(by_lr) == list(LRS) and all(len(v) == 2 for v in by_lr.values())
        lr = max(by_lr, key=lambda k: np.mean(by_lr[k]))
        cells[sparsity] = (100 * float(np.mean(by_lr[lr])), lr)
    return cells


def report(out: Path, *flags: str) -> tuple[dict[float, dict], str]:
    """Write the report of the study in `out`; its Table 1 rows by sparsity, and report.md."""
    assert main(["study", "report", str(out), *flags]) == 0
    rows = list(csv.DictReader((out / "report" / "table1.csv").open()))
    return {float(r["sparsity"]): r for r in rows}, (out / "report" / "report.md").read_text()


def assert_cells(rows: dict[float, dict], cells: dict[float, tuple[float, float]]) -> None:
    assert sorted(rows) == sorted(cells) == [0.0, 0.5]
    for sparsity, (score, lr) in cells.items():
        assert float(rows[sparsity]["rte_score"]) == pytest.approx(score)
        assert float(rows[sparsity]["rte_lr"]) == lr


def tamper(out: Path, edit) -> None:
    for path in (out / "runs").glob("finetune-*/result.json"):
        result = json.loads(path.read_text())
        edit(result)
        path.write_text(json.dumps(result))


def test_paper_metric_of_hand_made_results():
    mnli = {"task": "mnli", "dev_score": 0.7, "dev": {"dev_matched": {"accuracy": 0.8, "score": 0.8, "loss": 0.5},
                                                      "dev_mismatched": {"accuracy": 0.6, "score": 0.6, "loss": 0.7}}}
    assert paper_metric(mnli) == 0.8 and official_score(mnli) == 0.7
    stsb = {"task": "stsb", "dev_score": 0.85, "dev": {"dev": {"pearson": 0.9, "spearman": 0.8, "score": 0.85, "loss": 0.4}}}
    assert paper_metric(stsb) == 0.9
    old_cola = {"task": "cola", "dev_score": 0.3, "dev": {"dev": {"matthews_correlation": 0.3, "score": 0.3, "loss": 0.6}}}
    assert paper_metric(old_cola) is None and official_score(old_cola) == 0.3
    cola = {"task": "cola", "dev_score": 0.3, "dev": {"dev": {"matthews_correlation": 0.3, "score": 0.3, "accuracy": 0.75}}}
    assert paper_metric(cola) == 0.75
    assert paper_metric({"task": "mrpc", "dev": {"dev": {"f1": 0.9, "accuracy": 0.85, "score": 0.875}}}) == 0.85


def test_paper_metrics_report_has_the_best_accuracy_and_says_so(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study, out)
    default_md = (study / "report" / "report.md").read_text()
    rows, md = report(out, "--paper-metrics")
    assert_cells(rows, expected(out, lambda r: r["dev"]["dev"]["accuracy"]))
    assert "the best dev score over learning rates (0-100, the mean of the task's official metrics)" in default_md
    assert "the best dev accuracy over learning rates" in md and "Gordon et al. 2020" in md
    assert "official metrics" not in md and "as in the paper" not in default_md
    changed = [(a, b) for a, b in zip(default_md.splitlines(), md.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("- Each cell:")  # RTE: accuracy is the official score
    rows, md = report(out)  # without the flag: the official report again, to the byte
    assert md == default_md and (out / "report" / "table1.csv").read_text() == (study / "report" / "table1.csv").read_text()


def test_paper_metrics_choose_the_learning_rate_by_accuracy(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study, out)

    def edit(r):  # accuracy is best at 2e-3, the official score at 1e-3
        i = LRS.index(r["lr"])
        r["dev"]["dev"]["accuracy"] = 0.55 + 0.1 * i + 0.01 * r["seed"] + 0.02 * r["sparsity"]
        r["dev_score"] = r["dev"]["dev"]["score"] = 0.75 - 0.1 * i + 0.01 * r["seed"]

    tamper(out, edit)
    official = expected(out, lambda r: r["dev_score"])
    paper = expected(out, lambda r: r["dev"]["dev"]["accuracy"])
    assert {lr for _, lr in official.values()} == {1e-3} and {lr for _, lr in paper.values()} == {2e-3}
    assert_cells(report(out)[0], official)
    assert_cells(report(out, "--paper-metrics")[0], paper)


def test_a_run_without_accuracy_leaves_its_paper_cell_missing(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study, out)
    tamper(out, lambda r: r["dev"]["dev"].pop("accuracy") if (r["sparsity"], r["lr"], r["seed"]) == (0.5, 2e-3, 1) else None)
    rows, md = report(out, "--paper-metrics")
    assert rows[0.0]["rte_score"] and rows[0.5]["rte_score"] == "" and rows[0.5]["average_score"] == ""
    assert "| Pruned (during pre-training) | 50% |" in md and "| — | — |" in md and "1 table cells are missing (—)" in md
    rows, _ = report(out)
    assert rows[0.5]["rte_score"]  # the official score is still there
