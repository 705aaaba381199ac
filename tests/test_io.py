"""The atomic writer under kill injection: a process killed between any two file operations (``io.crash_point``,
``os._exit`` in a forked child: no cleanup runs, as under ``kill -9``) leaves what the next run recovers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prunelab import io

DIRECTORY_POINTS = ["directory built", "directory complete", "old directory moved aside", "directory swapped in"]


def killed_at(point: str, action) -> None:
    """Run `action()` in a forked child that dies (exit 9, no cleanup) when it reaches `point`; wait for it."""
    pid = os.fork()
    if pid == 0:  # the child
        def crash(name: str) -> None:
            if name == point:
                os._exit(9)

        io.crash_point = crash
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9, f"the child never reached {point!r}"


def write_version(out: Path, version: str) -> None:
    with io.atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text(version)
        (tmp / "b.txt").write_text(version)


@pytest.mark.parametrize("replacing", [False, True])
@pytest.mark.parametrize("point", DIRECTORY_POINTS)
def test_a_kill_between_any_two_directory_operations_is_recovered(tmp_path, point, replacing):
    out = tmp_path / "artifact"
    if replacing:
        write_version(out, "old")
    elif point == "old directory moved aside":
        pytest.skip("nothing to move aside when nothing is replaced")
    killed_at(point, lambda: write_version(out, "new"))
    io.recover_directory(out)
    # never a mix, never nothing where something was: the new version once it was complete, else the old (if any)
    committed = DIRECTORY_POINTS.index(point) >= 1
    expected = {"new"} if committed else {"old"} if replacing else None
    assert ({p.read_text() for p in out.iterdir() if p.name != io.OUTPUT_MARKER} if out.exists() else None) == expected
    assert [p.name for p in tmp_path.iterdir()] == (["artifact"] if expected else [])  # no .tmp/.new/.old leftovers
    write_version(out, "next")  # and the next write works
    assert {p.read_text() for p in out.iterdir() if p.name != io.OUTPUT_MARKER} == {"next"}


def test_leftovers_of_a_live_writer_are_left_alone(tmp_path):
    out = tmp_path / "artifact"
    busy = tmp_path / f".artifact.tmp-{os.getppid()}"  # our parent is alive: its half-built directory stays
    busy.mkdir()
    io.recover_directory(out)
    assert busy.is_dir()


def test_atomic_files_appear_whole_or_not_at_all(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_output(path) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    (tmp_path / "bad.json").write_text('{"a": 1,\n oops}')
    with pytest.raises(ValueError, match=r"result file .*bad.json is corrupt \(line 2"):
        io.read_json(tmp_path / "bad.json", "result file")


RUNNER_POINTS = ["claim taken", "attempt logged", "work cleared", "run finished", "result written"]


@pytest.mark.parametrize("point", RUNNER_POINTS)
def test_a_study_run_killed_between_any_two_file_operations_finishes_on_the_next_attempt(tmp_path, monkeypatch, point):
    """The runner's file operations under kill injection: the next runner retakes the stale claim, runs the run
    from a clean work/, and records exactly one result."""
    import dataclasses

    from prunelab.study import recipes
    from prunelab.study import claims
    from prunelab.study.runner import clear_stale_claims, init_study_dir, run_dir, status_of, study_status
    from prunelab.study.plan import expand
    from prunelab.study.spec import load_spec
    from study_fixtures import make_study

    def fake_pretrain(spec, data_dir, root, run, work):
        work.mkdir(parents=True)
        (work / "partial").write_text("x")
        assert len(list(work.iterdir())) == 1  # a clean work/: nothing left from a killed attempt
        return {"model": str(work), "dev_loss_before": 1.0, "dev_loss_after": 1.0, "realized_sparsity": 0.0, "seconds": 0.0}

    monkeypatch.setitem(recipes.RECIPES, "pretrain", dataclasses.replace(recipes.RECIPES["pretrain"], run=fake_pretrain))
    spec = load_spec(make_study(tmp_path))
    root = init_study_dir(spec, tmp_path / "out", spec.data_dir())
    run = next(r for r in expand(spec) if r.recipe == "pretrain")

    def attempt():
        from prunelab.study.runner import execute_claimed

        assert claims.take(run_dir(root, run.id)) is not None
        execute_claimed(root, run.id)

    killed_at(point, attempt)
    assert status_of(root, run) in ("pending", "done")  # the dead runner's claim is stale, never "running"
    if status_of(root, run) == "pending":
        attempt()
    clear_stale_claims(root)  # as the next `study run` does first
    record = json.loads((run_dir(root, run.id) / "result.json").read_text())
    assert record["id"] == run.id and status_of(root, run) == "done"
    assert study_status(root)["failed"] == 0 and not list(run_dir(root, run.id).glob("claim-*.json"))
    assert not list(run_dir(root, run.id).glob(".*"))  # no temporary files left behind


def test_half_written_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from prunelab.study.runner import clear_stale_claims

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # `pid` is now a dead writer's
    run = tmp_path / "runs" / "finetune-x"
    run.mkdir(parents=True)
    dead = [run / f".result.json.tmp-{pid}", run / f".claim.json.tmp-{pid}", run / f".claim.{pid}"]
    live = [run / f".result.json.tmp-{os.getppid()}"]
    for f in dead + live:
        f.write_text("{half")
    clear_stale_claims(tmp_path)
    assert [f.exists() for f in dead + live] == [False, False, False, True]
