import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.study.plan import describe, expand
from prunelab.study.runner import run_study, study_status
from prunelab.study.spec import load_spec
from study_fixtures import make_study

REPO = Path(__file__).resolve().parents[1]


def results(out: Path) -> int:
    return len(list((out / "runs").glob("*/result.json")))


def table(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "report" / "table1.csv").open()))


def same_table(out: Path, reference: Path) -> bool:
    """The report's tables, to the last digit: runs are seeded, so any process, executor or restart agrees."""
    return all((out / "report" / f).read_text() == (reference / "report" / f).read_text() for f in ("table1.md", "table1.csv"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the tiny study, and its report."""
    tmp = tmp_path_factory.mktemp("reference")
    spec = make_study(tmp)
    assert main(["study", "run", str(spec), "--out", str(tmp / "out")]) == 0
    return spec, tmp / "out"


def test_plan_expands_runs_with_shared_pretraining():
    spec = load_spec(REPO / "studies" / "compressing-bert.toml")
    plan = describe(expand(spec))
    assert plan["runs"] == 759 and plan["pretrain"] == 19  # dense + 9 sparsities x {magnitude, random}
    items = {i["id"]: i for i in plan["items"]}
    # one dense model feeds every sparsity-0 run and every pruned-after-fine-tuning run
    assert items["pretrain-s0.00"]["used_by"] == 5 * 4 * (1 + 9)
    assert items["finetune-information_deletion-s0.30-cola-lr3e-05-seed42"]["depends_on"] == ["pretrain-magnitude-s0.30"]
    assert items["finetune-random-s0.30-cola-lr3e-05-seed42"]["depends_on"] == ["pretrain-random-s0.30"]
    ids = [r.id for r in expand(spec)]
    assert len(set(ids)) == len(ids)  # one run per id
    # ids are stable across versions (a resumed study finds its runs): the forms of every kind, as written by 0.1.0
    assert {"pretrain-s0.00", "pretrain-magnitude-s0.90", "pretrain-random-s0.10", "finetune-dense-s0.00-cola-lr4e-05-seed42",
            "finetune-pruned_after_finetuning-s0.10-cola-lr2e-05-seed42"} <= set(ids)


def test_distinct_values_never_share_a_run_id(tmp_path):
    """0.12 and 0.125 once formatted as one id (s0.12): the 12.5% row vanished from Table 1."""
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('name="x"\nmodel="m"\nsparsities=[0.0, 0.12, 0.125]\nregimes=["pruned", "structured"]\n'
                         '[finetune]\ntasks=["RTE"]\nlrs=[1e-4, 1.00000001e-4]\n'
                         '[structured]\nheads=[0.25, 0.255]\nffn=[0.5, 0.5]\n')
    runs = expand(load_spec(spec_file))
    ids = [r.id for r in runs]
    assert len(set(ids)) == len(ids)
    assert {"pretrain-magnitude-s0.12", "pretrain-magnitude-s0.125", "structured-magnitude-h0.25-f0.50",
            "structured-magnitude-h0.255-f0.50"} <= set(ids)
    assert {r.params["sparsity"] for r in runs if r.recipe == "pretrain"} == {0.0, 0.12, 0.125}
    assert sum(r.recipe == "finetune" and r.params.get("sparsity") == 0.125 for r in runs) == 2  # both learning rates


def test_a_plan_that_would_merge_two_runs_is_refused(monkeypatch, tmp_path):
    from prunelab.study import plan

    monkeypatch.setattr(plan, "_s", lambda sparsity: "s0.1")  # an id format that loses digits
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('name="x"\nmodel="m"\nsparsities=[0.12, 0.125]\nregimes=["pruned"]\n')
    with pytest.raises(ValueError, match="plans two runs as 'pretrain-magnitude-s0.1': sparsity 0.12 and 0.125"):
        expand(load_spec(spec_file))


def test_plan_cli_on_the_shipped_specs(capsys):
    assert main(["study", "plan", str(REPO / "studies" / "compressing-bert.toml")]) == 0
    assert capsys.readouterr().out.startswith("study compressing-bert: 759 runs (19 pre-training, 740 fine-tuning)")
    assert main(["study", "plan", str(REPO / "studies" / "demo.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 20  # 7 pre-training (dense, 3 magnitude, 3 random), 13 fine-tuning on SST-2


@pytest.mark.parametrize("text, message", [
    ('name="x"\nmodel="m"\nsparsities=[0.5]\nseed=1\n', "unknown key 'seed' in"),
    ('name="x"\nmodel="m"\nsparsities=[0.5]\n[finetune]\ntask=["RTE"]\n', "unknown key 'task' in [finetune] of"),
    ('name="x"\nmodel="m"\nsparsities=[0.5]\n[extra]\na=1\n', "unknown key 'extra'"),
    ('name="x"\nmodel="m"\nsparsities=[1.5]\n', "sparsities in"),
    ('name="x"\nmodel="m"\nsparsities=[0.5]\nregimes=["magic"]\n', "unknown regime 'magic'"),
    ('name="x"\nmodel="m"\n', "lacks the required key 'sparsities'"),
    ('name="x"\nmodel=\n', "is not valid TOML"),
])
def test_spec_is_loaded_strictly(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(path)
    assert main(["study", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err if "TOML" not in message else message in err


def test_run_and_report(reference):
    spec, out = reference
    status = study_status(out)
    assert status["done"] == status["total"] == 8 and not status["failures"]
    report = out / "report"
    assert all((report / f).stat().st_size > 0 for f in ("table1.md", "table1.csv", "table1.tex", "figure1.png", "figure2.png", "report.md"))
    rows = table(out)
    assert [(r["regime"], float(r["sparsity"])) for r in rows] == [
        (regime, s) for regime in ("pruned", "information_deletion", "pruned_after_finetuning", "random") for s in (0.0, 0.5)]
    assert all(r["rte_score"] and r["pretrain_loss"] for r in rows)
    dense = {r["rte_score"] for r in rows if float(r["sparsity"]) == 0}
    assert len(dense) == 1  # sparsity 0 is one shared dense run
    pre = {(r["regime"], r["sparsity"]): float(r["pretrain_loss"]) for r in rows}
    pretrained = json.loads((out / "runs" / "pretrain-magnitude-s0.50" / "result.json").read_text())
    assert pre[("pruned", "0.5")] == pre[("information_deletion", "0.5")] == pytest.approx(pretrained["dev_loss_after"])
    assert pretrained["realized_sparsity"] == pytest.approx(0.5, abs=2e-3)
    text = (report / "report.md").read_text()
    assert "Runs: 8 done" in text and "| Random pruning | 50% |" in text and "figure2.png" in text
    assert r"\begin{tabular}" in (report / "table1.tex").read_text()
    assert all(len((p.parent / "attempts.log").read_text().splitlines()) == 1 for p in (out / "runs").glob("*/result.json"))


def test_finished_runs_are_never_redone(reference, capsys):
    spec, out = reference
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    assert main(["study", "run", str(spec), "--out", str(out), "--no-report"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == before
    assert main(["study", "status", str(out)]) == 0
    assert "8/8 done, 0 failed" in capsys.readouterr().out


def test_failed_runs_are_recorded_the_report_marks_them_and_retry_reruns(tmp_path, monkeypatch, reference):
    import dataclasses

    from prunelab.study.recipes import RECIPES

    spec_path = make_study(tmp_path)
    real = RECIPES["finetune"]

    def flaky(spec, data_dir, root, run, work):
        if run.params["regime"] == "random":
            raise RuntimeError("out of memory (simulated)")
        return real.run(spec, data_dir, root, run, work)

    monkeypatch.setitem(RECIPES, "finetune", dataclasses.replace(real, run=flaky))
    counts = run_study(load_spec(spec_path), tmp_path / "out", data_dir=None, progress=False)
    assert counts["failed"] == 1 and counts["done"] == 7
    assert "RuntimeError: out of memory (simulated)" in counts["failures"]["finetune-random-s0.50-rte-lr0.001-seed0"]
    assert main(["study", "report", str(tmp_path / "out")]) == 0
    random_row = [r for r in table(tmp_path / "out") if r["regime"] == "random" and r["sparsity"] == "0.5"][0]
    assert random_row["rte_score"] == "" and "— | — |" in (tmp_path / "out" / "report" / "table1.md").read_text()
    monkeypatch.setitem(RECIPES, "finetune", real)
    assert run_study(load_spec(spec_path), tmp_path / "out", progress=False)["failed"] == 1  # not retried by default
    assert run_study(load_spec(spec_path), tmp_path / "out", retry_failed=True, progress=False)["done"] == 8
    assert main(["study", "report", str(tmp_path / "out")]) == 0
    assert same_table(tmp_path / "out", reference[1])


def _runner(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prunelab", "study", "run", str(spec), "--out", str(out), "--no-report", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_at_several_points_then_resume_gives_the_same_table(tmp_path, reference):
    spec = make_study(tmp_path)
    out = tmp_path / "out"
    claims = lambda: list((out / "runs").glob("*/claim-*.json")) if (out / "runs").is_dir() else []  # noqa: E731
    points = [lambda: bool(claims()), lambda: results(out) >= 3 and bool(claims()), lambda: results(out) >= 6]
    for point in points:  # kill inside the first run, inside a later run, and between runs
        proc = _runner(spec, out)
        _wait_for(lambda: point() or proc.poll() is not None)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert results(out) < 8
    assert main(["study", "run", str(spec), "--out", str(out)]) == 0
    assert same_table(out, reference[1])  # same numbers as the uninterrupted study
    assert not list(out.glob("runs/*/claim-*.json")) and not list(out.glob("**/*.tmp*"))
    attempts = {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("runs/*/attempts.log")}
    assert max(attempts.values()) >= 2 and len(attempts) == 8  # some runs were restarted after a kill


def test_two_concurrent_runners_do_not_duplicate_work(tmp_path, reference):
    spec = make_study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", "run", str(spec), "--out", str(out), "--no-report"]) == 0
    for p in out.glob("runs/*"):  # start over, keeping the study directory
        import shutil

        shutil.rmtree(p)
    first, second = _runner(spec, out), _runner(spec, out)
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0
    attempts = {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("runs/*/attempts.log")}
    assert len(attempts) == 8 and set(attempts.values()) == {1}  # every run executed exactly once
    assert main(["study", "report", str(out)]) == 0 and same_table(out, reference[1])


def test_local_jobs_run_in_subprocesses(tmp_path, reference):
    spec = make_study(tmp_path)
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "out"), "--jobs", "2"]) == 0
    pids = {p.read_text().split(" pid ")[1].split()[0] for p in (tmp_path / "out").glob("runs/*/attempts.log")}
    assert str(os.getpid()) not in pids and len(pids) == 8
    assert same_table(tmp_path / "out", reference[1])


def test_ray_executor_on_a_local_instance(tmp_path, reference):
    ray = pytest.importorskip("ray")
    # a task of `cpus` CPUs computes on that many threads (Ray sets OMP_NUM_THREADS): as many as this process, so
    # the floating-point sums run in the same order as the reference's
    spec = make_study(tmp_path, extra=f"\n[resources]\ncpus = {torch.get_num_threads()}\ngpus = 0\n")
    try:
        assert main(["study", "run", str(spec), "--out", str(tmp_path / "out"), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    pids = {p.read_text().split(" pid ")[1].split()[0] for p in (tmp_path / "out").glob("runs/*/attempts.log")}
    assert str(os.getpid()) not in pids  # executed by Ray workers
    assert same_table(tmp_path / "out", reference[1])


def test_bad_study_inputs(tmp_path, capsys, reference):
    spec, out = reference
    other = make_study(tmp_path, extra="")
    other.write_text(other.read_text().replace('name = "tiny"', 'name = "other"'))
    assert main(["study", "run", str(other), "--out", str(out)]) == 2
    assert "holds study 'tiny' with a different spec" in capsys.readouterr().err
    assert main(["study", "status", str(tmp_path)]) == 2
    assert "is not a study directory" in capsys.readouterr().err
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "x"), "--executor", "local", "--jobs", "0"]) == 2
    assert "--jobs 0 must be >= 1" in capsys.readouterr().err


def test_a_study_made_with_other_versions_is_not_resumed(tmp_path):
    """Its finished runs would sit in one table beside runs computed by another torch, transformers or prunelab."""
    from prunelab.study.runner import init_study_dir

    spec_path = make_study(tmp_path)
    spec = load_spec(spec_path)
    root = init_study_dir(spec, tmp_path / "out", None)
    record = json.loads((root / "study.json").read_text())
    assert record["versions"]["torch"] and init_study_dir(spec, root, None) == root  # same versions: reopened
    record["versions"]["transformers"] = "4.0.0"
    (root / "study.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as err:
        init_study_dir(spec, root, None)
    assert "run with prunelab 0.1.0, torch" in str(err.value) and "transformers 4.0.0, not" in str(err.value)
    assert "resume it with those versions" in str(err.value) and not list((root / "runs").iterdir())  # nothing run
    del record["versions"]  # a study.json of an older prunelab records none: it reopens as before
    (root / "study.json").write_text(json.dumps(record))
    assert init_study_dir(spec, root, None) == root
