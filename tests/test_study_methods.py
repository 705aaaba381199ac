"""The adapt, distill and pruned_during_finetuning study regimes: their plan, a tiny study run for real, the report."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from prunelab.artifact import from_pretrained as load_artifact
from prunelab.cli import main
from prunelab.study.plan import expand
from prunelab.study.runner import study_status
from prunelab.study.spec import load_spec
from study_fixtures import make_study

METHODS = ["adapt", "distill", "pruned_during_finetuning"]
EXTRA = "\n[adapt]\nlrs = [3e-3, 1e-2]\nhead_lr = 1e-2\npenalty = 1e-3\n\n[distill]\nprune_every = 1\nalpha_hard = 0.5\nprune_start = 0.25\n"


def test_plan_of_the_methods_from_the_dense_model_with_one_teacher_per_task_and_seed(tmp_path):
    spec = load_spec(make_study(tmp_path, EXTRA, regimes=METHODS))
    runs = {r.id: r for r in expand(spec)}
    assert set(runs) == {
        "pretrain-s0.00", "finetune-dense-s0.00-rte-lr0.001-seed0", "teacher-rte-seed0",
        "finetune-adapt-s0.50-rte-lr0.003-seed0", "finetune-adapt-s0.50-rte-lr0.01-seed0",  # adapt: the scores' grid
        "finetune-distill-s0.50-rte-lr0.001-seed0", "finetune-pruned_during_finetuning-s0.50-rte-lr0.001-seed0",
    }
    assert runs["finetune-distill-s0.50-rte-lr0.001-seed0"].depends_on == ("pretrain-s0.00", "teacher-rte-seed0")
    assert runs["finetune-pruned_during_finetuning-s0.50-rte-lr0.001-seed0"].recipe == "prune_while_finetuning"
    assert "teacher" not in runs["finetune-pruned_during_finetuning-s0.50-rte-lr0.001-seed0"].params
    assert runs["finetune-adapt-s0.50-rte-lr0.01-seed0"].recipe == "adapt"
    four = dataclasses.replace(spec, regimes=["pruned", "information_deletion", "pruned_after_finetuning", "random"])
    assert not any(r.recipe in ("teacher", "adapt", "prune_while_finetuning") for r in expand(four))  # the paper's grid is unchanged


def test_bad_adapt_lrs_are_refused(tmp_path):
    spec = make_study(tmp_path, "\n[adapt]\nlrs = []\n", regimes=["adapt"])
    with pytest.raises(ValueError, match=r"\[adapt\] lrs"):
        load_spec(spec)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    spec = make_study(tmp, EXTRA, regimes=METHODS)
    assert main(["study", "run", str(spec), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def _result(study, run_id):
    return json.loads((study / "runs" / run_id / "result.json").read_text())


def test_method_runs_finish_at_their_sparsity_and_distill_learns_from_the_teacher(study):
    status = study_status(study)
    assert status["done"] == status["total"] == 7 and not status["failures"]
    teacher = _result(study, "teacher-rte-seed0")
    _, _, masks, info = load_artifact(teacher["model"])
    assert info["report"]["overall"]["sparsity"] < 0.01  # the teacher is dense
    config = json.loads((study / "runs" / "finetune-distill-s0.50-rte-lr0.001-seed0" / "work" / "run_config.json").read_text())["config"]
    assert config["teacher"] == teacher["model"] and config["alpha_hard"] == 0.5 and config["prune_every"] == 1 and config["prune_start"] == 0.25
    baseline = json.loads((study / "runs" / "finetune-pruned_during_finetuning-s0.50-rte-lr0.001-seed0" / "work" / "run_config.json").read_text())
    assert baseline["config"]["teacher"] is None
    for run_id in ("finetune-distill-s0.50-rte-lr0.001-seed0", "finetune-pruned_during_finetuning-s0.50-rte-lr0.001-seed0",
                   "finetune-adapt-s0.50-rte-lr0.003-seed0", "finetune-adapt-s0.50-rte-lr0.01-seed0"):
        assert 0.5 <= _result(study, run_id)["realized_sparsity"] < 0.51, run_id  # exact, plus the [PAD] row's zeros


def test_report_rows_of_the_methods(study):
    table = list(csv.DictReader((study / "report" / "table1.csv").open()))
    assert [(r["regime"], r["sparsity"]) for r in table] == [(m, s) for m in METHODS for s in ("0.0", "0.5")]
    assert all(r["rte_score"] for r in table)
    assert len({r["rte_score"] for r in table if r["sparsity"] == "0.0"}) == 1  # one shared dense run
    adapt = [r for r in table if r["regime"] == "adapt" and r["sparsity"] == "0.5"][0]
    assert float(adapt["rte_lr"]) in (3e-3, 1e-2)  # the best of the scores' grid
    text = (study / "report" / "report.md").read_text()
    assert "Adapting by pruning" in text and "Knowledge-aware pruning" in text
