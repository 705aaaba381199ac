"""The structured study regime: its spec section, its plan, its runs, and the report's every-method table and figure."""

from __future__ import annotations

import csv
import json

import pytest

from prunelab.cli import main
from prunelab.study.plan import expand
from prunelab.study.results import encoder_weights
from prunelab.study.spec import load_spec
from study_fixtures import make_study

SECTION = '\n[layer_drop]\nstrategies = ["top"]\ncounts = [1]\n\n[structured]\nheads = [0.5, 0.25]\nffn = [0.5, 0.0]\n'


@pytest.mark.parametrize("section, says", [
    ('criterion = "importance"', "[structured] criterion 'importance' / scope 'layer'"),
    ('scope = "matrix"', "allowed criteria magnitude, random"),
    ("heads = [0.5]\nffn = [0.5, 0.25]", "give two lists of the same length"),
    ("heads = [1.5]\nffn = [0.0]", "of fractions in [0, 1]"),
    ("heads = [1.0]\nffn = [0.0]", "1.0 removes every head"),
    ("heads = [0.5, 0.5]\nffn = [0.1, 0.1]", "no pair twice"),
    ("neurons = [0.5]", "unknown key 'neurons' in [structured]"),
])
def test_structured_section_is_validated(tmp_path, capsys, section, says):
    path = tmp_path / "bad.toml"
    path.write_text(f'name="x"\nmodel="m"\nsparsities=[0.0]\nregimes=["structured"]\n[structured]\n{section}\n')
    assert main(["study", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and str(path) in err and err.count("\n") == 1, err


def test_plan_has_one_structured_run_per_pair_and_its_fine_tuning(tmp_path):
    runs = {r.id: r for r in expand(load_spec(make_study(tmp_path, SECTION, regimes=["pruned", "structured"])))}
    assert runs["structured-magnitude-h0.50-f0.50"].params == {"regime": "structured", "heads": 0.5, "ffn": 0.5,
                                                               "criterion": "magnitude", "scope": "layer",
                                                               "start_run": "pretrain-s0.00"}
    tuned = runs["finetune-structured-h0.25-f0.00-rte-lr0.001-seed0"]
    assert tuned.depends_on == ("structured-magnitude-h0.25-f0.00",) and tuned.recipe == "finetune"
    assert "finetune-dense-s0.00-rte-lr0.001-seed0" in runs  # its reference


def test_a_study_sets_every_method_on_one_axis(tmp_path):
    spec = make_study(tmp_path, SECTION, regimes=["pruned", "layer_drop", "structured"], layers=4)
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    result = json.loads((out / "runs" / "structured-magnitude-h0.50-f0.50" / "result.json").read_text())
    assert result["heads_after"] == [2, 2, 2, 2] and result["encoder_params_after"] < result["encoder_params_before"]
    report = out / "report"
    rows = list(csv.DictReader((report / "methods.csv").open()))
    assert [(r["method"], r["setting"]) for r in rows] == [
        ("dense", ""), ("unstructured", "magnitude 50%"), ("layer dropping", "top 1"),
        ("structured", "magnitude heads 50% ffn 50%"), ("structured", "magnitude heads 25% ffn 0%")]
    kept = {r["setting"]: float(r["encoder_weights_kept"]) for r in rows}
    dense_nonzero, dense_all = encoder_weights(json.loads((out / "runs" / "pretrain-s0.00" / "result.json").read_text())["model"])
    assert kept[""] == pytest.approx(dense_nonzero / dense_all)
    assert kept["top 1"] == pytest.approx(0.75)  # one of four equal layers
    assert kept["magnitude heads 50% ffn 50%"] == pytest.approx(result["encoder_params_after"] / result["encoder_params_before"])
    assert 0.45 < kept["magnitude 50%"] < 0.55  # zeros counted: every encoder matrix at 50%, biases kept
    assert all(r["average_score"] for r in rows)
    assert (report / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "## Every method on one axis" in text and (report / "methods.md").read_text() in text
    deployment = list(csv.DictReader((report / "deployment.csv").open()))
    assert [(r["method"], r["setting"]) for r in deployment] == [(r["method"], r["setting"]) for r in rows]
    measured = json.loads((out / "runs" / "structured-magnitude-h0.50-f0.50" / "result.json").read_text())["deployment"]
    assert float(deployment[3]["latency_ms"]) == pytest.approx(measured["latency_ms"])
    assert all(float(r["compressed_bytes"]) > 0 and float(r["latency_ms"]) > 0 and r["noise_floor_ratio"] for r in deployment)
    dense_bytes = float(deployment[0]["compressed_bytes"])
    assert float(deployment[1]["compressed_bytes"]) < dense_bytes  # 50% zeros compress; the dense model does not
    assert float(deployment[3]["compressed_bytes"]) < dense_bytes  # smaller matrices
    def beats(a, b):  # a higher or equal score at a lower or equal latency, one strictly
        sa, ma, sb, mb = (float(x) for x in (a["average_score"], a["latency_ms"], b["average_score"], b["latency_ms"]))
        return sa >= sb and ma <= mb and (sa > sb or ma < mb)

    for r in deployment:  # the front is exactly the rows no other row beats
        assert (r["pareto"] == "1") == (not any(beats(o, r) for o in deployment if o is not r)), r
    assert min(deployment, key=lambda r: (float(r["latency_ms"]), -float(r["average_score"])))["pareto"] == "1"
    assert "## Which model to ship" in text and (report / "deployment.png").stat().st_size > 0


def test_pareto_front_keeps_what_nothing_beats():
    from prunelab.study.results import pareto_front

    def row(score, ms):
        return {"average": {"score": score}, "deployment": {"latency_ms": ms}}

    rows = [row(80, 100), row(75, 50), row(70, 60), row(85, 200), row(80, 100), {"average": None, "deployment": None}]
    assert pareto_front(rows) == {0, 1, 3, 4}  # 70 at 60 ms is beaten by 75 at 50 ms; equal rows both stay


def test_progress_gives_counts_and_an_eta_by_recipe():
    from prunelab.study.plan import Run
    from prunelab.study.runner import progress_note

    runs = [Run("p0", "pretrain", {}), Run("p1", "pretrain", {}), Run("f0", "finetune", {}), Run("f1", "finetune", {}),
            Run("f2", "finetune", {})]
    states = {"p0": "done", "p1": "pending", "f0": "done", "f1": "pending", "f2": "pending"}
    assert progress_note(runs, states, {"pretrain": [600.0]}, 1) == \
        "pretrain 1/2, finetune 1/3; ETA after a run of each recipe"
    # one pre-training run left at 10 min, two fine-tuning runs at 1 min: 12 min, not 5 runs x the mean of all
    assert progress_note(runs, states, {"pretrain": [600.0], "finetune": [60.0]}, 1) == \
        "pretrain 1/2, finetune 1/3; ETA 12 min by recipe"
    assert progress_note(runs, states, {"pretrain": [600.0], "finetune": [60.0]}, 2).endswith("ETA 6 min by recipe")
    assert progress_note(runs, dict.fromkeys(states, "done"), {}, 1) == "pretrain 2/2, finetune 3/3"
    assert progress_note(runs, states, {"pretrain": [30.0], "finetune": [5.0]}, 1).endswith("ETA 40 s by recipe")
