"""`prunelab speed` and sparse execution: honest timing, and sparse kernels only where they keep the outputs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import batch, tiny_model
from prunelab import Pruner, PruningConfig
from prunelab.artifact import save_artifact
from prunelab.cli import main
from prunelab.deploy.execution import SparseLinear, sparse_execution
from prunelab.deploy.speed import NOISE_FLOOR, measure_speed


def pruned_tiny(sparsity: float = 0.9, head: str = "cls"):
    model = tiny_model("bert", head)
    Pruner(model, PruningConfig(sparsity=sparsity)).update_masks(sparsity, step=0)
    return model


@pytest.mark.parametrize("mode", ["csr", "bsr"])
def test_sparse_execution_keeps_the_outputs(mode):
    model = pruned_tiny()
    inputs = batch("bert")
    with torch.no_grad():
        want = model(**inputs).logits
    sparse_execution(model, inputs, mode=mode, repeats=3)
    report = model.prunelab_execution
    assert len(report) == 13 and all(r["why"] for r in report)  # 6 target linears per layer x 2, and the pooler
    chosen = [r for r in report if r["choice"] != "dense"]
    swapped = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(chosen) == len(swapped)
    if mode == "csr":
        assert len(swapped) == 13 and all(r["choice"] == "csr" and r["ratio"] > 0 for r in report)
    if mode == "bsr":  # 32-wide blocks: only the 32x32 matrices of the tiny model have them
        assert {r["choice"] for r in report} <= {"bsr", "dense"} and any(r["choice"] == "bsr" for r in report)
    with torch.no_grad():
        got = model(**inputs).logits
    assert torch.allclose(got, want, atol=1e-5)


def fake_timer(dense: float, dense_again: float, **layouts: float):
    """A ``time_layer`` stand-in returning fixed medians (seconds), and the calls it got."""
    calls = []

    def timer(linear, shape, layouts_asked, repeats=7, drop_hopeless=True):
        calls.append({"shape": tuple(linear.weight.shape), "input": shape, "layouts": list(layouts_asked),
                      "drop_hopeless": drop_hopeless})
        return {"dense": dense, "dense_again": dense_again, **{k: layouts[k] for k in layouts_asked if k in layouts}}

    return timer, calls


@pytest.mark.parametrize("sparsity, medians, choice, why", [
    (0.9, {"dense": 1.0, "dense_again": 1.0, "csr": 0.5, "coo": 0.8}, "csr", "csr faster beyond the noise floor"),
    (0.9, {"dense": 1.0, "dense_again": 1.0, "csr": 0.98, "coo": 1.5}, "dense", "beyond the noise floor (3.0%"),
    (0.9, {"dense": 1.0, "dense_again": 1.2, "csr": 0.85, "coo": 0.9}, "dense", "beyond the noise floor (20.0%"),
    (0.9, {"dense": 1.0, "dense_again": 1.0}, "dense", "no sparse layout available"),
    (0.2, {"dense": 1.0, "dense_again": 1.0, "csr": 0.1}, "dense", "sparsity below 30%"),
])
def test_auto_switches_only_beyond_the_noise_floor(sparsity, medians, choice, why):
    """``auto`` with fixed medians: a sparse layout 2x faster is chosen; one within the noise floor (the larger of
    NOISE_MARGIN and the dense-vs-dense difference) is not; a layer too dense is not even timed."""
    model = pruned_tiny(sparsity)
    inputs = batch("bert")
    with torch.no_grad():
        want = model(**inputs).logits
    timer, calls = fake_timer(**medians)
    sparse_execution(model, inputs, mode="auto", timer=timer)
    report = model.prunelab_execution
    assert len(report) == 13 and {r["choice"] for r in report} == {choice}
    assert all(why in r["why"] for r in report), [r["why"] for r in report]
    swapped = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(swapped) == (13 if choice == "csr" else 0) and all(m.layout == "csr" for m in swapped)
    if sparsity < 0.3:
        assert calls == []
    else:  # every target linear timed on its input shape, with the CPU's candidates, hopeless ones dropped
        assert len(calls) == 13 and all(c["layouts"] == ["csr", "coo"] and c["drop_hopeless"] for c in calls)
        assert all(c["input"][-1] == c["shape"][1] for c in calls)
    if choice == "csr":
        assert all(r["ratio"] == 0.5 and r["dense_ms"] == 1e3 and r["chosen_ms"] == 500.0 for r in report)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, want, atol=1e-5)


def test_sparse_execution_mode_dense_only_reports():
    model = pruned_tiny()
    sparse_execution(model, batch("bert"), mode="dense")
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert all(r["choice"] == "dense" and r["why"] == "mode dense" for r in model.prunelab_execution)
    with pytest.raises(ValueError, match="unknown sparse execution mode 'fast'"):
        sparse_execution(model, batch("bert"), mode="fast")


def test_measure_times_models_interleaved_with_a_noise_floor(tmp_path):
    save_artifact(tiny_model("bert"), None, None, {}, tmp_path / "dense")
    save_artifact(pruned_tiny(head="base"), None, None, {}, tmp_path / "pruned")
    result = measure_speed([str(tmp_path / "dense"), str(tmp_path / "pruned")], batch_sizes=[1, 2], seq_len=8, repeats=3,
                     warmup=1, sparse_execution="auto")
    assert [(r["model"], r["batch"]) for r in result["rows"]] == [
        (m, b) for b in (1, 2) for m in (str(tmp_path / "dense"), str(tmp_path / "pruned"), NOISE_FLOOR)]
    first = [r for r in result["rows"] if r["model"] == str(tmp_path / "dense")]
    assert all(r["ratio"] == 1.0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in first)
    assert all(r["throughput"] == pytest.approx(r["batch"] / r["median_ms"] * 1e3) for r in result["rows"])
    assert set(result["execution"]) == {str(tmp_path / "dense"), str(tmp_path / "pruned")}


def test_threads_are_given_back_after_timing(tmp_path):
    save_artifact(tiny_model("bert"), None, None, {}, tmp_path / "dense")
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    result = measure_speed([str(tmp_path / "dense")], batch_sizes=[1], seq_len=8, repeats=1, warmup=0, threads=other)
    assert result["threads"] == other and torch.get_num_threads() == before  # a later computation runs as before


def test_speed_cli_prints_a_table_writes_json_and_times_onnx(tmp_path, capsys):
    save_artifact(tiny_model("bert"), None, None, {}, tmp_path / "dense")
    assert main(["export-onnx", str(tmp_path / "dense"), "--out", str(tmp_path / "dense.onnx")]) == 0
    capsys.readouterr()
    assert main(["speed", str(tmp_path / "dense"), str(tmp_path / "dense.onnx"), "--batch-sizes", "2", "--seq-len", "8",
                 "--repeats", "3", "--json", str(tmp_path / "speed.json")]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "dense.onnx" in out and "noise floor" in out
    data = json.loads((tmp_path / "speed.json").read_text())
    assert len(data["rows"]) == 3 and data["seq_len"] == 8


@pytest.mark.parametrize("argv, says", [
    (["--batch-sizes", "0"], "--batch-sizes entry 0 must be a whole number >= 1"),
    (["--batch-sizes", "a,b"], "--batch-sizes 'a,b' is not a comma-separated list of integers"),
    (["--device", "tpu"], "--device 'tpu': allowed cpu, cuda"),
    (["--autocast", "fp16"], "on --device cuda only"),
    (["--seq-len", "0"], "--seq-len 0 must be a whole number >= 1"),
])
def test_bad_speed_input_is_one_line(tmp_path, capsys, argv, says):
    save_artifact(tiny_model("bert"), None, None, {}, tmp_path / "dense")
    capsys.readouterr()
    assert main(["speed", str(tmp_path / "dense"), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_a_missing_onnx_file_is_one_line(tmp_path, capsys):
    assert main(["speed", str(tmp_path / "nothing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["csr", "bsr", "coo"])
def test_a_model_with_sparse_layers_copies_for_the_noise_floor(tmp_path, mode):
    """The noise floor is a deep copy of the first model after its sparse execution; CSR and BSR tensors cannot be
    deep-copied as tensors, so a model that chose them must still copy, with its own equal weights."""
    import copy

    model = pruned_tiny(head="base")
    inputs = batch("bert")
    sparse_execution(model, inputs, mode=mode, repeats=1)
    twin = copy.deepcopy(model)
    layers = [(a, b) for a, b in zip(model.modules(), twin.modules()) if isinstance(a, SparseLinear)]
    assert layers and all(a.weight is not b.weight and a.bias is not b.bias for a, b in layers)
    assert all(torch.equal(a.weight.to_dense(), b.weight.to_dense()) for a, b in layers)
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, twin(**inputs).last_hidden_state)
    save_artifact(pruned_tiny(head="base"), None, None, {}, tmp_path / "pruned")
    result = measure_speed([str(tmp_path / "pruned")], batch_sizes=[2], seq_len=8, repeats=2, warmup=1,
                           sparse_execution=mode)
    assert [r["model"] for r in result["rows"]] == [str(tmp_path / "pruned"), NOISE_FLOOR]


def test_a_compressed_artifact_counts_its_compressed_file(tmp_path):
    from prunelab.artifact import COMPRESSED_FILE
    from prunelab.deploy.compressed import compress
    from prunelab.deploy.speed import describe, model_bytes

    model = pruned_tiny(head="base")
    save_artifact(model, None, None, {}, tmp_path / "pruned")
    compress(str(tmp_path / "pruned"), tmp_path / "small")
    assert model_bytes(str(tmp_path / "small")) == (tmp_path / "small" / COMPRESSED_FILE).stat().st_size
    assert model_bytes(str(tmp_path / "pruned")) == (tmp_path / "pruned" / "model.safetensors").stat().st_size
    assert model_bytes(str(tmp_path / "small")) < model_bytes(str(tmp_path / "pruned"))
    assert describe(str(tmp_path / "small"), model) == "pytorch fp32 (compressed artifact)"
    assert model_bytes("org/not-here") is None
