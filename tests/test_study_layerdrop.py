"""The layer_drop study regime: its plan, its spec section, its runs and its part of the report."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import transformers

from prunelab.cli import main
from prunelab.study.plan import describe, expand
from prunelab.study.report import write_report
from prunelab.study import claims
from prunelab.study.runner import execute_claimed, init_study_dir, open_study, run_dir, study_status
from prunelab.study.spec import LayerDropSpec, load_spec
from study_fixtures import make_study

REPO = Path(__file__).resolve().parents[1]

SPEC = """
name = "ld"
model = "m"
sparsities = [0.0, 0.3, 0.6]
regimes = {regimes}
[finetune]
tasks = ["RTE", "SST-2"]
lrs = [1e-3, 2e-3]
seeds = [0]
[layer_drop]
strategies = ["top", "contribution"]
counts = [1, 2]
"""


def spec_file(tmp_path: Path, regimes: list[str], text: str = SPEC) -> Path:
    path = tmp_path / f"{'-'.join(regimes)}.toml"
    path.write_text(text.format(regimes=json.dumps(regimes)))
    return path


def test_plan_drops_layers_once_per_strategy_and_count_not_per_sparsity(tmp_path):
    runs = {r.id: r for r in expand(load_spec(spec_file(tmp_path, ["pruned", "layer_drop"])))}
    drops = [i for i, r in runs.items() if r.recipe == "droplayers"]
    assert drops == ["droplayers-top-k1", "droplayers-top-k2", "droplayers-contribution-k1", "droplayers-contribution-k2"]
    assert all(runs[i].depends_on == ("pretrain-s0.00",) for i in drops)  # dropped from the dense pre-trained model
    assert runs["droplayers-contribution-k2"].params == {"regime": "layer_drop", "strategy": "contribution", "count": 2,
                                                         "start_run": "pretrain-s0.00"}
    layer_drop = sorted(i for i in runs if i.startswith("finetune-layer_drop-"))
    assert layer_drop == sorted(f"finetune-layer_drop-{s}-k{k}-{t}-lr{lr}-seed0" for s in ("top", "contribution") for k in (1, 2)
                                for t in ("rte", "sst2") for lr in ("0.001", "0.002"))  # 3 sparsities, still 16 runs
    run = runs["finetune-layer_drop-top-k2-sst2-lr0.002-seed0"]
    assert run.depends_on == ("droplayers-top-k2",)
    assert run.params == {"regime": "layer_drop", "strategy": "top", "count": 2, "task": "sst2", "lr": 2e-3, "seed": 0,
                          "start_run": "droplayers-top-k2"}
    assert sum(i.startswith("finetune-dense-") for i in runs) == 4  # the shared dense runs, planned once
    assert [r.recipe for r in runs.values()] == ["pretrain"] * 3 + ["droplayers"] * 4 + ["finetune"] * 28


def test_adding_layer_drop_leaves_the_other_regimes_runs_alone(tmp_path):
    alone = expand(load_spec(spec_file(tmp_path, ["pruned", "random"])))
    both = {r.id: r for r in expand(load_spec(spec_file(tmp_path, ["pruned", "random", "layer_drop"])))}
    assert all(r.id in both and both[r.id].params == r.params and both[r.id].depends_on == r.depends_on for r in alone)


def test_layer_drop_alone_plans_its_dense_reference(tmp_path):
    runs = expand(load_spec(spec_file(tmp_path, ["layer_drop"])))
    assert [r.id for r in runs if r.recipe == "pretrain"] == ["pretrain-s0.00"]
    dense = [r for r in runs if r.id.startswith("finetune-dense-s0.00-")]
    assert len(dense) == 4 and all(r.depends_on == ("pretrain-s0.00",) for r in dense)
    assert describe(runs)["droplayers"] == 4 and describe(runs)["finetune"] == 4 + 16


def test_plan_cli_counts_the_layer_dropping_runs(tmp_path, capsys):
    assert main(["study", "plan", str(spec_file(tmp_path, ["pruned", "layer_drop"]))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study ld: 35 runs (3 pre-training, 4 layer dropping, 28 fine-tuning)")
    assert "  droplayers-top-k1  <- pretrain-s0.00\n" in out
    assert main(["study", "plan", str(REPO / "studies" / "methods-demo.toml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study methods-minilm-demo: 30 runs (2 pre-training, 10 layer dropping, 1 structured pruning, "
                          "13 fine-tuning, 1 teacher, 1 mask learning, 2 pruning while fine-tuning)")
    assert "finetune-layer_drop-alternate-even-k3-sst2-lr0.0001-seed42  <- droplayers-alternate-even-k3" in out


@pytest.mark.parametrize("section, message", [
    ('strategies = ["top", "middle"]', "[layer_drop] strategies in {path}: unknown strategy 'middle'; give a non-empty list"),
    ("strategies = []", "[layer_drop] strategies in {path}: got []"),
    ("counts = [2, 0]", "[layer_drop] counts in {path}: count 0; give a non-empty list without repeats of whole numbers >= 1"),
    ("counts = [1.5]", "[layer_drop] counts in {path}: count 1.5"),
    ("counts = [2, 2]", "[layer_drop] counts in {path}: got [2, 2]"),
    ("depth = 2", "unknown key 'depth' in [layer_drop] of {path}"),
])
def test_layer_drop_section_is_validated(tmp_path, capsys, section, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'name="x"\nmodel="m"\nsparsities=[0.0]\nregimes=["layer_drop"]\n[layer_drop]\n{section}\n')
    message = message.format(path=path)
    with pytest.raises(ValueError) as err:
        load_spec(path)
    assert message in str(err.value)
    if "strategy" in message:
        assert "top, bottom, alternate-even, alternate-odd, symmetric, contribution" in str(err.value)
    assert main(["study", "plan", str(path)]) == 2 and message in capsys.readouterr().err


def test_a_study_json_from_before_layer_drop_still_opens_and_resumes(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(SPEC.format(regimes='["pruned"]').replace("[layer_drop]\nstrategies = [\"top\", \"contribution\"]\ncounts = [1, 2]\n", ""))
    spec = load_spec(path)
    root = init_study_dir(spec, tmp_path / "out", None)
    record = json.loads((root / "study.json").read_text())
    del record["spec"]["layer_drop"]  # as written before the section existed
    (root / "study.json").write_text(json.dumps(record))
    reopened, _ = open_study(root)
    assert reopened.layer_drop == LayerDropSpec() and reopened.regimes == ["pruned"]
    assert init_study_dir(spec, root, None) == root  # same spec: reopened, not "a different spec"
    assert study_status(root)["total"] == len(expand(spec)) == 3 + 12


# -- a tiny study, run for real -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Pruned vs layer dropping on a 4-layer tiny BERT: 12 runs."""
    tmp = tmp_path_factory.mktemp("layerdrop")
    spec = make_study(tmp, extra='\n[layer_drop]\nstrategies = ["top", "contribution"]\ncounts = [1, 2]\n',
                      regimes=["pruned", "layer_drop"], layers=4)
    assert main(["study", "run", str(spec), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_layer_drop_runs_drop_the_layers_and_fine_tune_a_dense_model(study):
    status = study_status(study)
    assert status["done"] == status["total"] == 12 and not status["failures"]
    top = json.loads((study / "runs" / "droplayers-top-k2" / "result.json").read_text())
    assert top["dropped"] == [2, 3] and (top["layers_before"], top["layers_after"]) == (4, 2)
    assert top["params_after"] < top["params_before"] and top["seconds_before"] > 0 and top["seconds_after"] > 0
    model = Path(top["model"])
    assert transformers.AutoConfig.from_pretrained(model).num_hidden_layers == 2
    assert not (model / "masks.safetensors").exists()
    contribution = json.loads((study / "runs" / "droplayers-contribution-k1" / "result.json").read_text())
    scores = contribution["contribution_scores"]
    assert len(scores) == 4 and contribution["dropped"] == [max(range(4), key=scores.__getitem__)]
    tuned = json.loads((study / "runs" / "finetune-layer_drop-top-k2-rte-lr0.001-seed0" / "result.json").read_text())
    config = json.loads((study / "runs" / "finetune-layer_drop-top-k2-rte-lr0.001-seed0" / "work" / "run_config.json").read_text())["config"]
    assert config["model"] == top["model"] and config["masks"] == "held"
    assert tuned["realized_sparsity"] < 0.01  # no masks file: fine-tuned as a dense model, nothing held at zero


def test_report_has_the_layer_drop_table_and_figure(study):
    report = study / "report"
    assert (report / "layer_drop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rows(report / "layer_drop.csv")
    assert [(r["strategy"], r["count"]) for r in table] == [("dense", "0"), ("top", "1"), ("top", "2"),
                                                            ("contribution", "1"), ("contribution", "2")]
    assert all(r["rte_score"] and r["average_score"] for r in table)
    top = json.loads((study / "runs" / "droplayers-top-k2" / "result.json").read_text())
    row = table[2]
    assert row["dropped"] == "2 3" and row["layers_after"] == "2"
    assert float(row["params_kept"]) == pytest.approx(top["params_after"] / top["params_before"])
    assert float(row["forward_time_ratio"]) == pytest.approx(top["seconds_after"] / top["seconds_before"])
    table1 = rows(report / "table1.csv")
    assert [(r["regime"], r["sparsity"]) for r in table1] == [("pruned", "0.0"), ("pruned", "0.5")]  # no layer_drop rows
    assert table[0]["rte_score"] == table1[0]["rte_score"]  # the dense reference is Table 1's dense run
    text = (report / "report.md").read_text()
    assert "## Layer dropping" in text and "![Layer dropping](layer_drop.png)" in text
    assert "| top | 2 | 2, 3 | 2 of 4 |" in text and "| Dense (none dropped) | 0 | none | 4 of 4 | 100.0% | 1.00x |" in text
    assert (report / "layer_drop.md").read_text() in text


def test_too_many_layers_fails_that_run_clearly_and_the_report_marks_it(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study, out)
    record = json.loads((out / "study.json").read_text())
    record["spec"]["layer_drop"]["counts"] = [1, 2, 4]  # the tiny BERT has 4 layers: 4 cannot be dropped
    (out / "study.json").write_text(json.dumps(record))
    assert claims.take(run_dir(out, "droplayers-top-k4")) and execute_claimed(out, "droplayers-top-k4") == "failed"
    error = json.loads((out / "runs" / "droplayers-top-k4" / "error.json").read_text())["error"]
    assert error.startswith("InputError: cannot drop 4 layers") and "between 1 and 3 (the model has 4 layers" in error
    assert f"change [layer_drop] counts or strategies in {record['spec']['source']}" in error
    status = study_status(out)
    assert (status["done"], status["failed"], status["blocked"], status["pending"]) == (12, 1, 1, 2)
    write_report(out)
    table = rows(out / "report" / "layer_drop.csv")
    assert [(r["strategy"], r["count"]) for r in table][2:4] == [("top", "2"), ("top", "4")]
    assert table[2]["rte_score"] and not table[3]["rte_score"] and not table[3]["params_kept"] and not table[3]["dropped"]
    text = (out / "report" / "report.md").read_text()
    assert "| top | 4 | — | — | — | — | — | — |" in text and "Runs: 12 done, 1 failed" in text
    assert (out / "report" / "layer_drop.png").stat().st_size > 0
