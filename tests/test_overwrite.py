"""``--overwrite`` replaces only what prunelab wrote, never a user's directory and never an input: every command
refuses such an ``--out`` with one line and exit code 2 before it removes or writes anything."""

from __future__ import annotations

import json

import pytest

from glue_fixtures import glue_dir, save_tiny, write_corpus  # noqa: F401 (fixture)
from prunelab import io
from prunelab.cli import main


def snapshot(path) -> dict:
    """Every file under `path` with its bytes: what must survive a refused command unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tmp_path):
    return save_tiny(tmp_path / "dense")


def refused(argv, capsys, message: str) -> None:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_users_directory_survives_overwrite(tmp_path, model, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("three years of work")
    refused(["prune", model, "--sparsity", 0.5, "--out", keep, "--overwrite"], capsys, "prunelab did not write")
    assert snapshot(keep) == {"thesis.tex": b"three years of work"}


def test_the_working_directory_survives_out_dot(tmp_path, model, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    refused(["prune", model, "--sparsity", 0.5, "--out", ".", "--overwrite"], capsys, "prunelab did not write")
    assert snapshot(work) == {"notes.txt": b"mine"}


@pytest.mark.parametrize("where", ["is", "inside"])
def test_an_out_that_is_or_lies_inside_the_input_model_is_refused(tmp_path, model, capsys, where):
    before = snapshot(model)
    out = model if where == "is" else model / "pruned"
    refused(["prune", model, "--sparsity", 0.5, "--out", out, "--overwrite"], capsys,
            f"{'is' if where == 'is' else 'lies inside'} the input")
    assert snapshot(model) == before


def test_pretrain_over_its_own_input_model_deletes_nothing(tmp_path, model, capsys):
    """It once deleted the model, then failed reading it."""
    corpus = write_corpus(tmp_path / "c.txt")
    before = snapshot(model)
    refused(["pretrain", model, "--corpus", corpus, "--steps", 2, "--sparsity", 0.5, "--out", model, "--overwrite"],
            capsys, "is the input")
    assert snapshot(model) == before


def test_an_out_that_contains_an_input_is_refused(tmp_path, glue_dir, capsys):  # noqa: F811
    model = save_tiny(glue_dir.parent / "dense", head="base")
    before = snapshot(glue_dir.parent)
    refused(["finetune", model, "--task", "rte", "--data-dir", glue_dir, "--out", glue_dir.parent, "--overwrite",
             "--epochs", 1, "--batch-size", 4, "--max-seq-len", 16], capsys, "contains the input")
    assert snapshot(glue_dir.parent) == before


def test_compress_and_decompress_refuse_their_input_as_out(tmp_path, model, capsys):
    pruned, packed = tmp_path / "pruned", tmp_path / "packed"
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(pruned)]) == 0
    assert main(["compress", str(pruned), "--out", str(packed)]) == 0
    before = snapshot(pruned), snapshot(packed)
    refused(["compress", pruned, "--out", pruned, "--overwrite"], capsys, "is the input")
    refused(["decompress", packed, "--out", packed, "--overwrite"], capsys, "is the input")
    assert (snapshot(pruned), snapshot(packed)) == before


def test_prunelabs_own_outputs_are_replaced(tmp_path, model, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(out)]) == 0
    assert (out / io.OUTPUT_MARKER).is_file()
    assert main(["prune", str(model), "--sparsity", "0.7", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "prunelab.json").read_text())["config"]["sparsity"] == 0.7
    (out / io.OUTPUT_MARKER).unlink()  # as an older prunelab wrote it: its record file marks it
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(out), "--overwrite"]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(empty)]) == 0  # empty: no --overwrite needed


def test_a_training_run_replaced_with_overwrite_keeps_nothing_of_the_old_run(tmp_path):
    from prunelab.pipelines.common import RunOptions, prepare_run_dir

    out = tmp_path / "run"
    prepare_run_dir(RunOptions(model="m", out=str(out)), overwrite=False, resume=False)
    (out / "stale-checkpoint").write_text("old")
    prepare_run_dir(RunOptions(model="m", out=str(out)), overwrite=True, resume=False)
    assert sorted(p.name for p in out.iterdir()) == [io.OUTPUT_MARKER, "run_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run, set aside, is gone


def test_a_training_run_does_not_replace_a_users_directory(tmp_path):
    from prunelab.pipelines.common import RunOptions, prepare_run_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2")
    with pytest.raises(FileExistsError, match="prunelab did not write"):
        prepare_run_dir(RunOptions(model="m", out=str(mine)), overwrite=True, resume=False)
    assert snapshot(mine) == {"data.csv": b"1,2"}
