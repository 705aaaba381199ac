"""The main job's console: one progress display, each warning said once in words, details in each run's log."""

from __future__ import annotations

import dataclasses
import logging
import warnings

from prunelab.study import recipes
from prunelab.study.runner import run_study, run_dir
from prunelab.study.spec import load_spec
from study_fixtures import make_study


def test_a_study_says_each_warning_once_and_keeps_details_in_run_logs(tmp_path, monkeypatch, capfd):
    def noisy(spec, data_dir, root, run, work):
        work.mkdir(parents=True)
        warnings.warn("minilm has no MLM head; a freshly initialised head is trained from scratch", UserWarning)
        logging.getLogger("prunelab.pipelines.pretrain").info("step 3 of 4 (a detail for the log only)")
        return {"model": str(work), "dev_score": 50.0, "dev": {}, "train_loss_full": 1.0, "realized_sparsity": 0.0,
                "dev_loss_before": 1.0, "dev_loss_after": 1.0, "seconds": 0.0}

    for name, entry in list(recipes.RECIPES.items()):
        monkeypatch.setitem(recipes.RECIPES, name, dataclasses.replace(entry, run=noisy))
    logging.basicConfig(level=logging.WARNING)  # as the CLI sets it up: a console handler on the root logger
    logging.getLogger("prunelab").setLevel(logging.INFO)  # as a pipeline's run log does
    spec = load_spec(make_study(tmp_path))
    counts = run_study(spec, tmp_path / "out", progress=True)
    err = capfd.readouterr().err
    assert counts["done"] == counts["total"] == 8
    assert err.count("note: minilm has no MLM head; a freshly initialised head is trained from scratch") == 1
    assert "UserWarning" not in err and "warnings.warn(" not in err  # in words, without the source line
    assert "step 3 of 4" not in err  # INFO records stay out of the console
    for run in ("pretrain-s0.00", "finetune-dense-s0.00-rte-lr0.001-seed0"):
        log = (run_dir(tmp_path / "out", run) / "run.log").read_text()
        assert "minilm has no MLM head" in log and "step 3 of 4" in log
