"""A study's `[deployment] int8`: each measured model also as an INT8 ONNX encoder, timed beside its FP32 one, and
the deployment table, CSV and figure with INT8 points on the Pareto front; off by default, leaving the table as it was."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import pytest

from prunelab.study.recipes import measure_deployment
from prunelab.study.results import OFFICIAL, deployment_points
from prunelab.study.spec import DeploymentSpec, load_spec
from prunelab.study.figures import figure_deployment
from prunelab.study.tables import deployment_csv, deployment_markdown
from study_fixtures import make_study


def test_int8_is_off_by_default_and_a_spec_turns_it_on(tmp_path):
    assert DeploymentSpec().int8 is False
    assert load_spec(make_study(tmp_path / "a")).deployment.int8 is False
    assert load_spec(make_study(tmp_path / "b", "\n[deployment]\nint8 = true\n")).deployment.int8 is True


def test_a_model_run_measures_its_int8_encoder_beside_the_fp32_one(tmp_path):
    spec = load_spec(make_study(tmp_path, "\n[deployment]\nint8 = true\nrepeats = 2\nbatch_size = 2\nseq_len = 16\n"))
    work = tmp_path / "work"
    work.mkdir()
    d = measure_deployment(spec, tmp_path / "model", work)
    int8 = d["int8"]
    assert int8["onnx_bytes"] < int8["fp32_onnx_bytes"] and int8["weight_type"] in ("QInt8", "QUInt8")
    assert int8["latency_ms"] > 0 and int8["p10_ms"] <= int8["latency_ms"] <= int8["p90_ms"] and int8["paired_ratio"] > 0
    assert int8["max_abs_diff"] < 0.2 * int8["output_scale"]  # the encoder's hidden states, close to FP32's
    assert d["latency_ms"] > 0 and d["batch"] == [2, 16] and list(work.iterdir()) == []  # nothing left behind


def test_a_model_run_measures_its_vocabulary_cut_beside_the_full_model(tmp_path):
    spec = load_spec(make_study(tmp_path, "\n[deployment]\nvocab = true\nrepeats = 2\nbatch_size = 2\nseq_len = 16\n"))
    work = tmp_path / "work"
    work.mkdir()
    d = measure_deployment(spec, tmp_path / "model", work, spec.data_dir())
    cut = d["vocab"]
    assert cut["vocab_after"] < cut["vocab_before"] and cut["compressed_bytes"] < d["compressed_bytes"]
    assert cut["latency_ms"] > 0 and cut["p10_ms"] <= cut["latency_ms"] <= cut["p90_ms"] and cut["paired_ratio"] > 0
    assert "int8" not in d and list(work.iterdir()) == []  # nothing left behind
    points = deployment_points([method("dense", "", 80.0, d["latency_ms"], d["compressed_bytes"]) | {"deployment": d}])
    assert [p["form"] for p in points] == ["fp32", "vocab"]
    table = deployment_markdown(data([points[0]]))
    assert "| vocabulary cut | 80.0† |" in table and f"| {cut['compressed_bytes'] / 1e6:.2f} |" in table


def method(name, setting, score, ms, size, int8=None):
    deployment = {"compressed_bytes": size, "latency_ms": ms, "p10_ms": ms, "p90_ms": ms, "noise_floor_ratio": 1.0,
                  "sparse_layers": 0, "target_layers": 13}
    if int8:
        deployment["int8"] = {"onnx_bytes": int8[1], "latency_ms": int8[0], "p10_ms": int8[0], "p90_ms": int8[0],
                              "paired_ratio": int8[0] / ms, "weight_type": "QInt8", "max_abs_diff": 0.01, "output_scale": 3.0}
    return {"method": name, "setting": setting, "run": name, "kept": 1.0, "deployment": deployment,
            "cells": {}, "average": {"score": score, "train_loss": 0.5}}


def data(methods, int8=True):
    spec = SimpleNamespace(name="t", deployment=DeploymentSpec(int8=int8))
    return {"methods": methods, "spec": spec, "metric": OFFICIAL, "tasks": ["rte"]}


def test_the_table_has_an_int8_row_per_measured_model_and_int8_points_on_the_front(tmp_path):
    methods = [method("dense", "", 80.0, 100.0, 90e6, int8=(40.0, 23e6)),
               method("unstructured", "magnitude 50%", 79.0, 100.0, 50e6, int8=(45.0, 23e6)),
               method("layer dropping", "top 1", 70.0, 80.0, 75e6)]  # measured before int8 was asked for
    points = deployment_points(methods)
    assert [(p["method"], p["form"]) for p in points] == [
        ("dense", "fp32"), ("dense", "int8"), ("unstructured", "fp32"), ("unstructured", "int8"), ("layer dropping", "fp32")]
    table = deployment_markdown(data(methods))
    assert "| Form |" in table and "MB on disk" in table
    assert "| ★ | dense | none | INT8 ONNX | 80.0† | 100.0% | 23.00 | 40.0 | 0.40x |" in table  # the FP32 score, marked
    rows = list(csv.DictReader(io.StringIO(deployment_csv(data(methods)))))
    front = {(r["method"], r["form"]) for r in rows if r["pareto"] == "1"}
    # dense INT8 (80 at 40 ms) beats every FP32 point and the other INT8 one (79 at 45 ms)
    assert front == {("dense", "int8")}
    assert [r["onnx_bytes"] for r in rows] == ["", "23000000.0", "", "23000000.0", ""]
    figure_deployment(data(methods), tmp_path / "deployment.png")
    assert (tmp_path / "deployment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_int8_the_table_is_as_before():
    methods = [method("dense", "", 80.0, 100.0, 90e6), method("unstructured", "magnitude 50%", 79.0, 50.0, 50e6)]
    table = deployment_markdown(data(methods, int8=False))
    assert table.splitlines()[0] == ("| | Method | Setting | Avg. score | Encoder weights kept | Compressed MB | "
                                     "Latency ms | vs dense |")
    assert "INT8" not in table and "form" not in deployment_csv(data(methods, int8=False)).splitlines()[0]


@pytest.mark.parametrize("section", ["int8 = 1", "int8 = \"yes\""])
def test_int8_must_be_true_or_false(tmp_path, capsys, section):
    from prunelab.cli import main

    path = make_study(tmp_path, f"\n[deployment]\n{section}\n")
    assert main(["study", "plan", str(path)]) == 2
    assert "[deployment] int8" in capsys.readouterr().err
