"""The study's criteria axis: ids of existing specs unchanged, other criteria named in theirs, the oneshot regimes
(the fine-tuned model pruned one-shot, scored as it is and after fine-tuning on), a tiny study run for real and its
criteria table and figure."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from prunelab.artifact import from_pretrained as load_artifact
from prunelab.cli import main
from prunelab.study.plan import expand
from prunelab.study.runner import study_status
from prunelab.study.spec import load_spec
from study_fixtures import make_study

ONESHOT = "\n[oneshot]\ncalibration_samples = 8\n"


def test_adding_criteria_keeps_every_id_and_names_the_new_criterion_in_its_own(tmp_path):
    spec = load_spec(make_study(tmp_path))
    before = {r.id: r for r in expand(spec)}
    assert spec.criteria == ["magnitude"]
    more = {r.id: r for r in expand(dataclasses.replace(spec, criteria=["magnitude", "movement"]))}
    assert set(before) <= set(more)
    assert all(more[i].params == before[i].params for i in before)
    new = set(more) - set(before)
    assert new == {"pretrain-movement-s0.50", "finetune-pruned-movement-s0.50-rte-lr0.001-seed0",
                   "finetune-information_deletion-movement-s0.50-rte-lr0.001-seed0",
                   "finetune-pruned_after_finetuning-movement-s0.50-rte-lr0.001-seed0"}
    assert all(more[i].params["criterion"] == "movement" for i in new)
    assert more["finetune-pruned-movement-s0.50-rte-lr0.001-seed0"].depends_on == ("pretrain-movement-s0.50",)
    assert more["pretrain-movement-s0.50"].params["sparsity"] == 0.5


def test_oneshot_plan_prunes_each_task_teacher_by_each_criterion_and_fine_tunes_it_on(tmp_path):
    spec = load_spec(make_study(tmp_path, ONESHOT, regimes=["oneshot", "oneshot_finetuned"]))
    spec = dataclasses.replace(spec, criteria=["magnitude", "wanda", "sparsegpt"])
    runs = {r.id: r for r in expand(spec)}
    assert set(runs) == {"pretrain-s0.00", "teacher-rte-seed0",
                         *(f"oneshot-{c}-s0.50-rte-seed0" for c in ("magnitude", "wanda", "sparsegpt")),
                         *(f"finetune-oneshot_finetuned-{c}-s0.50-rte-lr0.001-seed0" for c in ("magnitude", "wanda", "sparsegpt"))}
    assert runs["oneshot-wanda-s0.50-rte-seed0"].depends_on == ("teacher-rte-seed0",)
    assert runs["finetune-oneshot_finetuned-wanda-s0.50-rte-lr0.001-seed0"].depends_on == ("oneshot-wanda-s0.50-rte-seed0",)


@pytest.mark.parametrize("extra, regimes, message", [
    ('criteria = ["wanda"]\n', ["pruned"], r"criterion 'wanda' in criteria .* applies to none of the regimes pruned; add one "
                                           r"that takes it \(oneshot, oneshot_finetuned\)"),
    ('criteria = ["movement"]\n', ["oneshot"], r"criterion 'movement' .* applies to none"),
    ('criteria = ["wanda"]\n', ["oneshot", "pruned"], r"regime 'pruned' .* takes none of criteria \['wanda'\]; add one of "
                                                     r"magnitude, random, movement"),
    ('criteria = ["wanda", "movement"]\n', ["pruned_during_finetuning", "oneshot", "pruned"], None),
    ('criteria = ["magnitude", "magnitude"]\n', ["pruned"], r"without repeats"),
    ('criteria = ["optimal-brain"]\n', ["pruned"], r"criteria \['optimal-brain'\].*from magnitude"),
    ('criteria = []\n', ["pruned"], r"non-empty list"),
    ("\n[oneshot]\nexclude = ['wings']\n", ["oneshot"], r"unknown kind 'wings' in \[oneshot\] exclude"),
])
def test_bad_criteria_are_refused_with_what_is_allowed(tmp_path, extra, regimes, message):
    text = make_study(tmp_path, regimes=regimes).read_text()
    head, _, tail = text.partition("[data]")
    path = tmp_path / "spec.toml"
    path.write_text(head + (extra if not extra.startswith("\n[") else "") + "[data]" + tail + (extra if extra.startswith("\n[") else ""))
    if message is None:
        assert load_spec(path).criteria == ["wanda", "movement"]
        return
    with pytest.raises(ValueError, match=message):
        load_spec(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("criteria")
    path = make_study(tmp, ONESHOT, regimes=["oneshot", "oneshot_finetuned", "pruned_during_finetuning"])
    text = path.read_text().replace("[data]", 'criteria = ["magnitude", "wanda", "sparsegpt", "movement"]\n\n[data]', 1)
    path.write_text(text)
    assert main(["study", "run", str(path), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def _result(study, run_id):
    return json.loads((study / "runs" / run_id / "result.json").read_text())


def test_oneshot_runs_prune_the_teacher_exactly_and_fine_tuning_keeps_their_zeros(study):
    status = study_status(study)
    assert status["done"] == status["total"] and not status["failures"]
    teacher = load_artifact(_result(study, "teacher-rte-seed0")["model"])[0]
    masks = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        result = _result(study, f"oneshot-{criterion}-s0.50-rte-seed0")
        model, _, saved, info = load_artifact(result["model"])
        assert info["config"]["criterion"] == criterion and set(info["config"]["exclude"]) == {"embeddings", "pooler"}
        # each criterion's own one-shot scope, as `prunelab prune` uses it: Wanda's paper compares within each row
        assert info["config"]["scope"] == result["scope"] == ("row" if criterion == "wanda" else "matrix")
        assert result["realized_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert 0 <= result["dev_score"] <= 1 and result["dev_examples"] == {"dev": 8}
        masks[criterion] = saved
        if criterion != "magnitude":
            assert info["calibration"]["samples"] == 8 and info["calibration"]["task"] == "rte"
        assert type(model).__name__ == type(teacher).__name__ == "BertForSequenceClassification"  # the head kept
        tuned = _result(study, f"finetune-oneshot_finetuned-{criterion}-s0.50-rte-lr0.001-seed0")
        assert tuned["realized_sparsity"] == pytest.approx(0.5, abs=1e-3)  # masks held while fine-tuning on
        config = json.loads((study / "runs" / f"finetune-oneshot_finetuned-{criterion}-s0.50-rte-lr0.001-seed0" / "work"
                             / "run_config.json").read_text())["config"]
        assert config["model"] == result["model"] and config["epochs"] == 1
    name = next(iter(masks["wanda"]))
    assert not torch.equal(masks["wanda"][name], masks["magnitude"][name])  # calibration changed the choice
    movement = json.loads((study / "runs" / "finetune-pruned_during_finetuning-movement-s0.50-rte-lr0.001-seed0" / "work"
                           / "run_config.json").read_text())["config"]
    assert movement["criterion"] == "movement"


def test_criteria_table_and_figure(study):
    report = study / "report"
    rows = list(csv.DictReader((report / "criteria.csv").open()))
    series = {(r["regime"], r["criterion"]) for r in rows}
    assert series == {("oneshot", c) for c in ("magnitude", "wanda", "sparsegpt")} | \
        {("oneshot_finetuned", c) for c in ("magnitude", "wanda", "sparsegpt")} | \
        {("pruned_during_finetuning", c) for c in ("magnitude", "movement")}
    assert all(r["average_score"] for r in rows)  # every cell finished
    teacher = 100 * _result(study, "teacher-rte-seed0")["dev_score"]
    for r in rows:
        if r["regime"].startswith("oneshot"):
            value = float(r["rte_score"])
            expected = teacher if r["sparsity"] == "0.0" else 100 * _result(
                study, f"oneshot-{r['criterion']}-s0.50-rte-seed0")["dev_score"] if r["regime"] == "oneshot" else None
            if expected is not None:
                assert value == pytest.approx(expected)
    assert (report / "criteria.png").stat().st_size > 10_000
    text = (report / "report.md").read_text()
    assert "## Criteria compared" in text and "| One-shot, fine-tuned model (no retraining) | wanda |" in text
